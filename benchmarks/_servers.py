"""The processes under test: the echo backend and the gateway, each a child process.

``python benchmarks/_servers.py echo|gateway --report-fd N [...]`` binds port 0,
writes one JSON line with the ports it really bound to file descriptor ``N`` and
serves until its stdin closes (the coordinator exited or asked it to stop) or
it gets SIGTERM/SIGINT. :class:`Child` is the coordinator's side: start, read
the report with a deadline, stop (gracefully, then harder), read CPU and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _harness import raise_open_files_limit

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = 4


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a child's log, indented under an error message ("" when there are none)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("\n  " + "\n  ".join(text)) if text else ""


class ChildError(RuntimeError):
    """A child process failed to start, report or stop."""


class Child:
    """A server child process: started, reported, measured and always stopped."""

    def __init__(
        self,
        role: str,
        args: list[str],
        log_file: Path,
        *,
        cwd: Path | None = None,
        command: list[str] | None = None,
    ) -> None:
        """Start ``_servers.py role`` (or ``command``, e.g. the Go echo backend) with ``--report-fd N args``."""
        self.role = role
        self.log_file = log_file
        read_fd, write_fd = os.pipe()
        self._log = open(log_file, "ab")  # noqa: SIM115 - the child writes to it until stop()
        prefix = command or [sys.executable, str(HERE / "_servers.py"), role]
        try:
            self.proc = subprocess.Popen(
                [*prefix, "--report-fd", str(write_fd), *args],
                stdin=subprocess.PIPE,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                cwd=cwd,
            )
        finally:
            os.close(write_fd)
        self._report_fd = read_fd
        self.report: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_report(self, timeout: float) -> dict[str, Any]:
        """The child's JSON report line; raises with the child's log tail if it dies or stays silent."""
        deadline = time.monotonic() + timeout
        data = b""
        try:
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChildError(f"{self.role}: no report within {timeout:.0f} s{self._tail()}")
                ready, _, _ = select.select([self._report_fd], [], [], min(left, 0.5))
                if ready:
                    chunk = os.read(self._report_fd, 4096)
                    if not chunk:
                        raise ChildError(f"{self.role}: exited before reporting{self._tail()}")
                    data += chunk
        finally:
            os.close(self._report_fd)
        self.report = json.loads(data.split(b"\n", 1)[0])
        if "error" in self.report:
            raise ChildError(f"{self.role}: {self.report['error']}{self._tail()}")
        return self.report

    def _tail(self) -> str:
        self._log.flush()
        return log_tail(self.log_file, 15)

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return _rss_kib(self.pid, self.role)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Close stdin (the child's stop signal), then SIGTERM, then SIGKILL, each with a deadline."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            except OSError:
                pass
            for step, wait in ((None, timeout), (self.proc.terminate, 3.0), (self.proc.kill, 3.0)):
                if step is not None:
                    step()
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()
        return self.proc.returncode


NGINX_CONF = """\
daemon off;
master_process on;  # the workers are the processes whose CPU time and RSS we read
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{
    worker_connections {nofile};
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /bench-ready {{
            return 204;
        }}
        location / {{
            proxy_pass http://127.0.0.1:{backend_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            tcp_nodelay on;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
    )


def nginx_version(binary: str) -> str:
    proc = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    return (proc.stderr or proc.stdout).strip().removeprefix("nginx version: ")


class Nginx:
    """nginx in front of the backend: a non-daemon child with a generated config, one worker.

    The coordinator binds the listening socket (port 0) and hands it over as an inherited socket
    (the ``NGINX`` environment variable nginx uses for binary upgrades), so the port is the one the
    system picked and nothing else can take it between bind and start.
    """

    role = "nginx"

    def __init__(self, binary: str, tmp: Path, backend_port: int, log_file: Path, workers: int = 1) -> None:
        self.workers = workers
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_file = log_file
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4096)
        self.port = self._sock.getsockname()[1]
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=self.port, backend_port=backend_port, nofile=nofile,
                                           workers=workers))
        fd = self._sock.fileno()
        os.set_inheritable(fd, True)
        self._log = open(log_file, "ab")  # noqa: SIM115 - the child writes to it until stop()
        self.proc = subprocess.Popen(
            [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
            env={**os.environ, "NGINX": f"{fd};"},
            preexec_fn=_raise_limit_and_ignore_sigint,
        )
        self.error_log = tmp / "error.log"
        self.worker_pid = self.proc.pid  # until the worker is known (wait_ready)
        self.worker_pids = [self.proc.pid]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float) -> None:
        """Until nginx answers its readiness location, with a deadline."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChildError(f"nginx exited with {self.proc.returncode}{self._tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
                conn.request("GET", "/bench-ready")
                if conn.getresponse().status == 204:
                    conn.close()
                    self._sock.close()  # nginx holds its own copy
                    self.worker_pids = self._workers()
                    self.worker_pid = self.worker_pids[0]
                    return
                conn.close()
            except OSError as exc:
                last = exc
            time.sleep(0.05)  # polling a server we cannot otherwise observe, under a deadline
        raise ChildError(f"nginx not ready within {timeout:.0f} s: {last!r}{self._tail()}")

    def _workers(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        if len(children) != self.workers:
            raise ChildError(f"nginx: expected {self.workers} worker process(es), found {children}")
        return [int(child) for child in children]

    def _tail(self) -> str:
        return log_tail(self.error_log, 10)

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.worker_pids)

    def rss_kib(self) -> int:
        return _rss_kib(self.worker_pid, self.role)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGQUIT (graceful), then SIGTERM, then SIGKILL, each with a deadline."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._sock.close()
        self._log.close()
        return self.proc.returncode


CADDYFILE = """\
{{
\tadmin off
\tauto_https off
\tstorage file_system {tmp}/data
}}
:0 {{
\tbind 127.0.0.1
\trespond /bench-ready 204
\treverse_proxy 127.0.0.1:{backend_port}
}}
"""


def caddy_binary() -> str | None:
    return shutil.which("caddy") or ("/usr/bin/caddy" if os.access("/usr/bin/caddy", os.X_OK) else None)


def caddy_version(binary: str) -> str:
    proc = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=10)
    return proc.stdout.strip().split()[0] if proc.stdout.strip() else "unknown"


class Caddy:
    """Caddy in front of the backend: its ``reverse_proxy`` (WebSocket upgrades pass through), one core.

    ``GOMAXPROCS`` (default 1) is Caddy's counterpart of nginx's one worker: the Go runtime runs Go code on
    that many threads. Caddy listens on port 0 (``bind 127.0.0.1``); the port the system picked is read
    from the process's own listening socket in /proc, so nothing can take it between bind and start.
    """

    role = "caddy"

    def __init__(self, binary: str, tmp: Path, backend_port: int, log_file: Path, gomaxprocs: int = 1) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_file = log_file
        conf = tmp / "Caddyfile"
        conf.write_text(CADDYFILE.format(tmp=tmp, backend_port=backend_port))
        self._log = open(log_file, "ab")  # noqa: SIM115 - the child writes to it until stop()
        env = {**os.environ, "GOMAXPROCS": str(gomaxprocs), "HOME": str(tmp),
               "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config")}
        self.proc = subprocess.Popen(
            [binary, "run", "--config", str(conf), "--adapter", "caddyfile"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            preexec_fn=_raise_limit_and_ignore_sigint,
        )
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float) -> None:
        """Until Caddy listens and answers its readiness path, with a deadline."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChildError(f"caddy exited with {self.proc.returncode}{self._tail()}")
            self.port = self.port or listening_port(self.pid)
            if self.port:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
                    conn.request("GET", "/bench-ready")
                    status = conn.getresponse().status
                    conn.close()
                    if status == 204:
                        return
                except OSError as exc:
                    last = exc
            time.sleep(0.05)  # polling a server we cannot otherwise observe, under a deadline
        raise ChildError(f"caddy not ready within {timeout:.0f} s: {last!r}{self._tail()}")

    def _tail(self) -> str:
        self._log.flush()
        return log_tail(self.log_file, 10)

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return _rss_kib(self.pid, self.role)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (Caddy's graceful stop), then SIGKILL, each with a deadline."""
        if self.proc.poll() is None:
            for step, wait in ((self.proc.terminate, timeout), (self.proc.kill, 3.0)):
                step()
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()
        return self.proc.returncode


def listening_port(pid: int) -> int:
    """The TCP port ``pid`` listens on (its first listening socket in /proc/net/tcp{,6}), or 0 if none yet."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return 0


def _raise_limit_and_ignore_sigint() -> None:
    raise_open_files_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def _rss_kib(pid: int, role: str) -> int:
    """Resident set size now, from /proc/<pid>/status (VmRSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ChildError(f"{role}: no VmRSS in /proc/{pid}/status")


# ------------------------------------------------------------------ child side


def _quiet_logs(level: int = logging.WARNING) -> None:
    """Keep per-connection log lines off the measured path; warnings still reach the log file."""
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def watch() -> None:
        try:
            sys.stdin.buffer.read()
        finally:
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="stdin-eof", daemon=True).start()


def _report(fd: int, payload: dict[str, Any]) -> None:
    os.write(fd, json.dumps(payload).encode() + b"\n")
    os.close(fd)


async def _serve(start, stop_server, fd: int) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    _stop_on_stdin_eof(loop, stop)
    try:
        report = await start()
    except Exception as exc:
        _report(fd, {"error": f"{type(exc).__name__}: {exc}"})
        raise
    _report(fd, report)
    try:
        await stop.wait()
    finally:
        await asyncio.wait_for(stop_server(), 15.0)


def _echo_main(args: argparse.Namespace) -> None:
    from echo.server import EchoService
    from gateway.config.models import EchoContext, EchoServer

    model = EchoServer(
        kind="EchoServer",
        name="bench-echo",
        host="127.0.0.1",
        port=1,  # overridden by port=0 below; the model wants a real number
        contexts=[EchoContext(path="/echo/", mode="echo")],
        control=False,
        max_message_size=4 * 2**20,
    )
    service = EchoService(model, port=0)

    async def start() -> dict[str, Any]:
        await service.start()
        return {"port": service.port}

    asyncio.run(_serve(start, service.stop, args.report_fd))


def _http_main(args: argparse.Namespace) -> None:
    """An HTTP backend for message routes: every POST is answered 200 with its body, as text/plain."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="text/plain")

    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)

    async def start() -> dict[str, Any]:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        return {"port": site._server.sockets[0].getsockname()[1]}  # type: ignore[union-attr]

    asyncio.run(_serve(start, runner.cleanup, args.report_fd))


async def _start_gateway(config_dir: Path) -> tuple[Any, dict[str, int]]:
    """Start the gateway runtime on the generated config; return it and the ports it bound by Port name."""
    from gateway.config import check
    from gateway.serving.runtime import Gateway

    result = check([config_dir])
    if result.config is None:
        raise RuntimeError(f"the generated config does not check: {result.diagnostics}")
    # The transform callable is importable with the config directory on sys.path.
    sys.path.insert(0, str(config_dir))
    gateway = Gateway(result.config, admin=False, echo=False)
    await gateway.start()
    return gateway, {name: port for name, (_, port) in gateway.addresses.items()}


def _gateway_main(args: argparse.Namespace) -> None:
    handle: dict[str, Any] = {}

    async def start() -> dict[str, Any]:
        runtime, ports = await _start_gateway(Path(args.config))
        handle["runtime"] = runtime
        if not os.environ.get("WSGATE_BENCH_NO_FREEZE"):  # as `wsgate run` does after start-up
            from gateway.serving.runtime import freeze_startup_heap

            freeze_startup_heap()
        return {"ports": ports}

    async def stop() -> None:
        runtime = handle.get("runtime")
        if runtime is not None:
            await runtime.stop()

    if not args.profile:
        asyncio.run(_serve(start, stop, args.report_fd))
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(_serve(start, stop, args.report_fd))
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["echo", "http", "gateway"])
    parser.add_argument("--report-fd", type=int, required=True)
    parser.add_argument("--config", help="gateway: the generated config directory")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--log-json", action="store_true",
                        help="gateway: log as `wsgate run` does (gateway.common.log's JSON lines) at --log-level")
    parser.add_argument("--profile", help="gateway: run under cProfile and write the stats to this file on stop")
    args = parser.parse_args(argv)
    if args.log_json:
        from gateway.common.log import configure_logging

        configure_logging("json", args.log_level)
    else:
        _quiet_logs(getattr(logging, args.log_level.upper()))
    raise_open_files_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the coordinator stops us
    sys.path.insert(0, str(HERE))
    if args.role == "echo":
        _echo_main(args)
    elif args.role == "http":
        _http_main(args)
    else:
        _gateway_main(args)


if __name__ == "__main__":
    main()
