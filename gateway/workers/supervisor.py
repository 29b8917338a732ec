"""The supervisor of `wsgate run --workers N`: one checked config handed to every worker, kept alive, drained.

It checks and watches the config tree (once, for all workers), holds every
port before the workers bind it (``ports``: no other gateway may join a
port its workers share; a port configured as 0 gets one number for every
worker), runs the echo servers
and the admin listener, and answers for the whole gateway: ``/readyz`` and
``/reload`` list the generation each worker serves (a reload some worker
failed to apply is ``split``), ``/connections`` is summed and ``/metrics`` aggregated.

A worker that dies is restarted with the current config after a backoff
(0.25 s doubling to 30 s while it keeps dying young). SIGTERM: unready at
once, SIGTERM to every worker (each drains with its shutdown_grace), exit 0
when they are gone; a second signal is forwarded (the workers stop at once).

Active health checks: one worker probes for the whole gateway (the lowest
index at start; when it dies, the lowest one serving is told to take over,
``probe``). Its verdict changes come to the supervisor, which keeps them and
hands each to the other workers; a worker that (re)starts gets them with its
config. ``/upstreams`` shows that one verdict per endpoint and each worker's
passive marks. The supervisor probes nothing itself: the workers already
compile the routes a probe needs (TLS contexts, upstream headers).

Metrics: prometheus_client's multiprocess mode. The supervisor creates
``PROMETHEUS_MULTIPROC_DIR`` for the workers (unless the operator set one),
marks dead workers' files with ``mark_process_dead``, and serves ``/metrics``
as the aggregation of every worker's files (``gateway.operations.metrics``), after asking
each worker to flush its batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ..common.connection_ids import INSTANCE_ENV, instance_from_environment
from ..config.cache import CheckCache
from ..config.tree import Config
from ..operations.admin import AdminServer, PlainText, dashboard_routes, healthz
from ..push import forward as push_forward
from ..push.service import PUSH_PORT_KEY
from ..serving.reloader import Reloader, ReloadStatus
from ..serving.signals import stop_requested
from . import control
from .ports import PortHold, hold_port

if TYPE_CHECKING:
    from ..build.pipeline import Built
    from ..operations.metrics import ReloadMetrics

log = structlog.get_logger("wsgate.supervisor")


class WorkerStartError(RuntimeError):
    """A worker process exited, or answered an error, before it served: the supervisor's start fails with one line."""


REQUEST_TIMEOUT = 30.0  # seconds a worker has to answer a status or apply request
YOUNG = 10.0  # a worker that dies younger than this counts as failing again: the backoff grows


def worker_count(text: str) -> int:
    """``--workers``: a positive number, or ``auto`` for one per CPU core."""
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    count = int(text)
    if count < 1:
        raise ValueError("--workers must be at least 1")
    return count


class Worker:
    """One worker slot: the process serving it now, its control channel, and what it last said."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pid: int | None = None
        self.generation = 0
        self.ready = False
        self.started_at = 0.0
        self.restarts = 0
        self.failures = 0  # deaths in a row, each younger than YOUNG
        self.last_error: str | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0
        self.started = asyncio.Event()

    async def request(self, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        if self.writer is None or not self.ready:
            return {"ok": False, "error": "worker not running", "generation": self.generation}
        self._ids += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._ids] = future
        control.send(self.writer, {**message, "id": self._ids})
        try:
            async with asyncio.timeout(timeout):
                return await future
        except (TimeoutError, ConnectionError) as exc:
            return {"ok": False, "error": f"no answer: {exc.__class__.__name__}", "generation": self.generation}
        finally:
            self._pending.pop(self._ids, None)

    def answered(self, message: dict[str, Any]) -> None:
        future = self._pending.pop(message.get("id") or 0, None)
        if future is not None and not future.done():
            future.set_result(message)

    def gone(self) -> None:
        self.ready = False
        self.writer = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("worker gone"))
        self._pending.clear()

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "pid": self.pid, "generation": self.generation, "ready": self.ready,
                "restarts": self.restarts, "error": self.last_error}


class Supervisor(ReloadStatus):
    def __init__(self, config: Config, count: int, *, paths: Sequence[str | Path] | None = None,
                 admin: tuple[str, int] | None = None, log_format: str = "auto", watch: bool = True,
                 check_cache: CheckCache | None = None) -> None:
        self.config = config
        self.paths = [str(p) for p in paths] if paths else [str(config.root)]
        self.workers = [Worker(i) for i in range(count)]
        self.admin_address = admin
        self.log_format = log_format
        self.watch = watch
        self.generation = 1
        self.stopping = False
        self.holders: dict[tuple[str, int, str], PortHold] = {}
        self.port_numbers: dict[str, int] = {}
        self.served: set[int] = set()  # numbers handed to the workers: they may listen there, a probe would fail
        self.admin: AdminServer | None = None
        self.echo_services: list[Any] = []
        # The reload sequence a single gateway runs too; here applying hands the config to every worker as the
        # next generation. Its metrics come with the workers' metrics directory (run).
        self.reloader = Reloader(self.paths, self._hand_out, lambda: (self.config.digest(), self.generation),
                                 stopping=lambda: self.stopping, cache=check_cache, describe=self.split,
                                 values=config.values_files)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.metrics_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR of the workers
        self._own_metrics_dir = False
        self.prober: int | None = None  # the index of the worker running the gateway's active health checks
        # The prober's active verdicts, (api, url) -> active_ok, reason, since: handed to every (re)started worker.
        self.verdicts: dict[tuple[str, str], dict[str, Any]] = {}
        # One instance id for every worker: their connection ids say this instance (gateway/common/connection_ids).
        self.instance = instance_from_environment()

    # ------------------------------------------------------------------ ports
    def reserve_ports(self, config: Config) -> dict[str, int]:
        """A number for every enabled port, held for the workers (``hold_port``: a configured one probed and
        locked, a 0 one given a fresh number); raises StartError when another process holds one."""
        from ..serving.runtime import StartError

        numbers: dict[str, int] = {}
        keep: dict[tuple[str, int, str], PortHold] = {}
        try:
            for name, loaded in config.ports.items():
                model = loaded.model
                if not model.enabled:
                    continue
                # A configured address is held once, whatever Port names it; each port 0 gets its own number.
                key = (model.host, model.port, "" if model.port else name)
                held = keep.get(key) or self.holders.get(key)
                if held is None:
                    try:
                        held = hold_port(model.host, model.port, probe=model.port not in self.served)
                    except OSError as exc:
                        raise StartError.cannot_listen(name, model.host, model.port, exc) from exc
                keep[key] = held
                numbers[name] = held.number
            push = config.settings.push
            if push is not None and push.enabled:  # every worker serves the push API too (gateway/push)
                key = (push.host, push.port, "" if push.port else PUSH_PORT_KEY)
                held = keep.get(key) or self.holders.get(key)
                if held is None:
                    try:
                        held = hold_port(push.host, push.port, probe=push.port not in self.served)
                    except OSError as exc:
                        raise StartError.cannot_listen("push", push.host, push.port, exc) from exc
                keep[key] = held
                numbers[PUSH_PORT_KEY] = held.number
        except BaseException:
            for key, held in keep.items():
                if self.holders.get(key) is not held:
                    held.close()
            raise
        for key, held in self.holders.items():
            if keep.get(key) is not held:
                held.close()
        self.holders = keep
        self.port_numbers = numbers
        self.served.update(numbers.values())
        return numbers

    # ---------------------------------------------------------------- workers
    async def spawn(self, worker: Worker) -> None:
        """Start a process for the slot and hand it the current config; raises if it cannot start serving."""
        probes = self.prober is None or self.prober == worker.index  # before any await: worker 0 first at start
        if probes:
            self.prober = worker.index
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.workers.worker", str(child.fileno()), str(worker.index),
                pass_fds=[child.fileno()], start_new_session=True, env={**os.environ, INSTANCE_ENV: self.instance})
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=control.LIMIT)
        worker.process, worker.writer, worker.pid = process, writer, process.pid
        worker.started_at = time.monotonic()
        control.send(writer, {"op": "start", "config": control.pack_config(self.config), "paths": self.paths,
                              "generation": self.generation, "ports": self.port_numbers,
                              "log_format": self.log_format, "probe": probes,
                              "verdicts": [[api, url, v["active_ok"], v["reason"]]
                                           for (api, url), v in self.verdicts.items()]})
        first = await control.receive(reader)
        if first is None or first.get("op") != "started":
            if self.prober == worker.index:
                self.prober = None
            worker.last_error = (first or {}).get("error", "exited before it started")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            worker.gone()
            raise WorkerStartError(f"worker {worker.index} did not start: {worker.last_error}")
        worker.generation, worker.ready, worker.last_error = first["generation"], True, None
        log.info("worker_started", worker=worker.index, pid=process.pid, generation=worker.generation,
                 restarts=worker.restarts, probing=probes)
        for api, url, active_ok, reason in first.get("verdicts") or ():
            self._verdict(worker, api, url, active_ok, reason)
        self._spawn_task(self._listen(worker, reader, process), f"wsgate-worker-{worker.index}")

    async def _listen(self, worker: Worker, reader: asyncio.StreamReader, process: asyncio.subprocess.Process) -> None:
        while (message := await control.receive(reader)) is not None:
            if message.get("op") == "verdict":
                self._verdict(worker, message["api"], message["url"], message["active_ok"], message["reason"])
            elif message.get("op") in push_forward.OPS:  # a push for a sibling worker (gateway/push/forward.py)
                self._spawn_task(push_forward.supervise(message, worker, self.workers, self.instance,
                                                        self._send_to), "wsgate-push-forward")
            else:
                worker.answered(message)
        code = await process.wait()
        worker.gone()
        if self.prober == worker.index and not self.stopping:
            await self._hand_probing_over(worker)
        if self.stopping:
            log.info("worker_stopped", worker=worker.index, pid=process.pid, code=code)
            return
        lived = time.monotonic() - worker.started_at
        worker.failures = worker.failures + 1 if lived < YOUNG else 1
        delay = min(0.25 * 2 ** (worker.failures - 1), 30.0)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        worker.last_error = f"died ({how})"
        self._forget_metrics(process.pid)
        log.error("worker_died", worker=worker.index, pid=process.pid, how=how, lived=round(lived, 3),
                  restart_in=delay)
        await asyncio.sleep(delay)
        while not self.stopping:
            worker.restarts += 1
            try:
                await self.spawn(worker)
                return
            except Exception as exc:
                worker.failures += 1
                delay = min(0.25 * 2 ** (worker.failures - 1), 30.0)
                log.error("worker_restart_failed", worker=worker.index, error=str(exc), restart_in=delay)
                await asyncio.sleep(delay)

    @staticmethod
    def _send_to(worker: Any, message: dict[str, Any]) -> None:
        if worker.writer is not None:
            control.send(worker.writer, message)

    # ----------------------------------------------------------------- health
    def _verdict(self, source: Worker, api: str, url: str, active_ok: bool, reason: str) -> None:
        """The prober's active verdict on an endpoint: keep it, and hand a change to every other worker."""
        if source.index != self.prober:  # a former prober's last words: only one worker decides
            return
        key = (api, url)
        known = self.verdicts.get(key)
        if known is not None and known["active_ok"] == active_ok:
            return
        self.verdicts[key] = {"active_ok": active_ok, "reason": reason, "since": time.time()}
        if known is None and active_ok:
            return  # every worker starts optimistic: nothing to hand on
        message = {"op": "verdict", "api": api, "url": url, "active_ok": active_ok, "reason": reason}
        for worker in self.workers:
            # A worker still starting reads it once it serves: its channel buffers it.
            if worker is not source and worker.writer is not None:
                control.send(worker.writer, message)

    def _replace_verdicts(self, verdicts: list[list[Any]]) -> None:
        """The prober's verdicts after a reload: endpoints it no longer has are forgotten (a stale 'down' must not
        reach a worker started later), the others keep their ``since`` unless the verdict changed."""
        kept: dict[tuple[str, str], dict[str, Any]] = {}
        for api, url, active_ok, reason in verdicts:
            known = self.verdicts.get((api, url))
            if known is None or known["active_ok"] != active_ok:
                known = {"active_ok": active_ok, "reason": reason, "since": time.time()}
            kept[(api, url)] = known
        self.verdicts = kept

    async def _hand_probing_over(self, dead: Worker) -> None:
        """The prober died: the lowest-index worker serving probes from now on (else the next one started)."""
        self.prober = None
        for worker in sorted(self.workers, key=lambda w: w.index):
            if worker is dead or not worker.ready:
                continue
            self.prober = worker.index
            log.info("prober_handed_over", worker=worker.index, previous=dead.index)
            reply = await worker.request({"op": "probe"})
            if reply.get("ok"):
                for api, url, active_ok, reason in reply.get("verdicts") or ():
                    self._verdict(worker, api, url, active_ok, reason)
                return
            self.prober = None  # it did not take it (died meanwhile?): try the next

    def _spawn_task(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def signal_workers(self, sig: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    # ----------------------------------------------------------------- reload
    async def reload(self, trigger: str = "manual") -> dict[str, Any]:
        """Build the tree once (the same build as validate, transforms imported); hand a changed config to every
        worker as the next generation (``gateway.serving.reloader``: the sequence a single gateway runs too)."""
        outcome = await self.reloader.reload(trigger)
        # Every worker's wsgate_config_info says whether the reload failed (a failed one never reaches them).
        served = self.reloader.status()
        message = {"op": "served", "digest": served["digest"], "commit": served["commit"], "failed": not outcome["ok"]}
        for worker in self.workers:
            if worker.writer is not None and worker.ready:
                control.send(worker.writer, message)
        return outcome

    async def _hand_out(self, result: Built, trigger: str, _generation: int | None) -> dict[str, Any]:
        """The supervisor's apply: every worker gets the config as the next generation (each decides what it
        does to its own connections); not one taking it keeps the last good config for new workers."""
        from ..serving.runtime import StartError

        new = result.config
        assert new is not None
        old_config, old_generation = self.config, self.generation
        try:
            ports = self.reserve_ports(new)
        except (OSError, StartError) as exc:
            self.reserve_ports(old_config)
            return {"ok": False, "error": f"cannot reserve a port: {exc}"}
        self.config, self.generation = new, old_generation + 1
        message = {"op": "apply", "config": control.pack_config(new), "generation": self.generation, "ports": ports}
        replies = await asyncio.gather(*(w.request(message) for w in self.workers))
        for worker, reply in zip(self.workers, replies, strict=True):
            if reply.get("ok"):
                worker.generation = reply["generation"]
            else:
                worker.last_error = reply.get("error") or "reload failed"
        for worker, reply in zip(self.workers, replies, strict=True):
            if worker.index == self.prober and reply.get("verdicts") is not None:
                self._replace_verdicts(reply["verdicts"])
        applied = sum(1 for r in replies if r.get("ok"))
        if applied == 0:  # nobody serves it: keep the last good config for the workers started from now on
            self.config, self.generation = old_config, old_generation
            self.reserve_ports(old_config)
        elif self.admin is not None:
            self.admin.refresh(new)  # its token file and certificate, re-read (a broken one is logged, and kept)
        log.info("reload_handed_out", trigger=trigger, generation=self.generation, applied=applied,
                 workers=len(self.workers))
        return {"ok": applied == len(self.workers), "workers_applied": applied,
                "errors": {w.index: r.get("error") or (r.get("outcome") or {}).get("error")
                           for w, r in zip(self.workers, replies, strict=True) if not r.get("ok")}}

    async def _reload_on_change(self, trigger: str) -> None:
        await self.reload(trigger)

    def split(self) -> dict[str, Any]:
        generations = sorted({w.generation for w in self.workers if w.ready})
        return {"split": len(generations) > 1 or any(g != self.generation for g in generations),
                "workers": [w.describe() for w in self.workers]}

    # ------------------------------------------------------------------ admin
    async def _statuses(self) -> list[dict[str, Any]]:
        return [r for r in await asyncio.gather(*(w.request({"op": "status"}) for w in self.workers))
                if "connections" in r]

    async def readyz(self, _: Any) -> tuple[int, Any]:
        """Ready while not stopping and some worker serves; each worker's generation and live connections."""
        serving = [w for w in self.workers if w.ready]
        status = "stopping" if self.stopping else "ready" if serving else "starting"
        if status == "ready" and self.reload_failing and self.config.settings.admin.unready_after_failed_reload:
            status = "reload-failed"
        body = {"status": status, "generation": self.generation, "config": self.config_status, **self.split()}
        answers = await asyncio.gather(*(w.request({"op": "status"}, timeout=5.0) for w in self.workers))
        for entry, answer in zip(body["workers"], answers, strict=True):
            if "connections" in answer:
                entry["connections"] = answer["connections"]["total"]
        return (200 if status == "ready" else 503), body

    def last_reload_answer(self, _: Any) -> tuple[int, Any]:
        return 200, {"reloads": self.reload_count, "last_reload": self.last_reload, "generation": self.generation,
                     "history": list(self.reload_history), "config": self.config_status, **self.split()}

    async def reload_answer(self, _: Any) -> tuple[int, Any]:
        outcome = await self.reload("admin")
        return (200 if outcome["ok"] else 422), outcome

    async def connections(self, _: Any) -> tuple[int, Any]:
        total: dict[str, Any] = {}
        for status in await self._statuses():
            _add_counts(total, status["connections"])
        return 200, total or {"total": 0, "upgrading": 0}

    async def metrics(self, _: Any) -> tuple[int, Any]:
        from ..operations.metrics import CONTENT_TYPE, render_directory

        await self._statuses()  # each worker flushes its batches into the shared directory as it answers
        assert self.metrics_dir is not None
        return 200, PlainText(render_directory(self.metrics_dir).decode(), CONTENT_TYPE)

    async def upstreams(self, _: Any) -> tuple[int, Any]:
        """Every endpoint once: the prober's active verdict, and each worker's passive mark and load."""
        statuses = await asyncio.gather(*(w.request({"op": "status"}) for w in self.workers))
        apis: dict[str, dict[str, dict[str, Any]]] = {}
        for worker, status in zip(self.workers, statuses, strict=True):
            for api, endpoints in ((status.get("upstreams") or {}).get("apis") or {}).items():
                for seen in endpoints:
                    verdict = self.verdicts.get((api, seen["url"])) or {}
                    active_ok = verdict.get("active_ok", seen["active_ok"])
                    entry = apis.setdefault(api, {}).setdefault(seen["url"], {
                        "url": seen["url"], "active_ok": active_ok, "healthy": active_ok,
                        "since": verdict.get("since", seen["since"]),
                        "reason": verdict.get("reason", seen["reason"]), "last_probe": None, "workers": []})
                    if status.get("probing"):
                        entry["last_probe"] = seen["last_probe"]
                    # Healthy: every worker gives it new connections (the verdict, and no passive mark anywhere).
                    entry["healthy"] = entry["healthy"] and seen["healthy"]
                    if not seen["healthy"] and seen["active_ok"]:
                        entry["reason"] = seen["reason"]  # a passive mark: what that worker saw
                    entry["workers"].append({"index": worker.index, "healthy": seen["healthy"],
                                             "passive_cool_down": seen["passive_cool_down"],
                                             "pending": seen["pending"], "open": seen["open"]})
        return 200, {"prober": self.prober,
                     "apis": {api: list(endpoints.values()) for api, endpoints in sorted(apis.items())}}

    def config_answer(self, _: Any) -> tuple[int, Any]:
        from ..operations.admin import _redacted

        resources = sorted(self.config.resources().items())
        names: dict[str, list[str]] = {}
        for (kind, name), _model in resources:
            names.setdefault(kind, []).append(name)
        return 200, {"digest": self.config.digest(), "generation": self.generation, "resources": names,
                     "documents": [_redacted(model) for _, model in resources]}

    # -------------------------------------------------------------- lifecycle
    async def run(self) -> int:
        from ..serving.runtime import StartError, admin_start_access, start_echo_servers
        from ..serving.watch import ConfigWatcher

        settings = self.config.settings
        if len(self.workers) > 1 and settings.state.backend == "memory":
            log.warning("limits_per_worker", workers=len(self.workers),
                        hint="with state: memory each worker counts every throttle on its own (up to workers x the "
                             "limit in total); set the Gateway's state to redis to share the counts")
        watcher: ConfigWatcher | None = None
        async with stop_requested() as stopping:
            try:
                self._metrics_dir()
                self.reloader.metrics = self._reload_metrics()
                host, port = self.admin_address or (settings.admin.host, settings.admin.port)
                admin = self.admin_address is not None or settings.admin.enabled
                try:  # as a single gateway's start: one line, exit 1, before anything listens or a worker starts
                    access = admin_start_access(self.config, (host, port) if admin else None)
                    self.reserve_ports(self.config)
                    if self.config.echo_servers:
                        self.echo_services = await start_echo_servers(self.config)
                except StartError as exc:
                    log.error("start_failed", error=str(exc), hint=exc.hint)
                    return 1
                try:
                    await asyncio.gather(*(self.spawn(w) for w in self.workers))
                except WorkerStartError as exc:  # e.g. a port taken between the hold and the workers' bind
                    log.error("start_failed", error=str(exc),
                              hint="the worker's own error is quoted; for a port in use, stop the other process or "
                                   "change `port`/`host` in the Port resource")
                    return 1
                if access is not None:
                    self.admin = AdminServer(self, host, port, routes={
                        "/healthz": healthz, "/readyz": self.readyz, "/config": self.config_answer,
                        "/connections": self.connections, "/metrics": self.metrics, "/upstreams": self.upstreams,
                        "/reload": self.last_reload_answer, **dashboard_routes()},
                        post_routes={"/reload": self.reload_answer},
                        **access)
                    try:
                        await self.admin.start()
                    except OSError as exc:
                        error = StartError.admin_cannot_listen(host, port, exc)
                        log.error("start_failed", error=str(error), hint=error.hint)
                        self.admin = None
                        return 1
                for name, number in self.port_numbers.items():
                    if name == PUSH_PORT_KEY:  # the workers say where the push API listens
                        continue
                    log.info("listening", name=name, host=self.config.ports[name].model.host, port=number,
                             tls=self.config.ports[name].model.tls is not None, workers=len(self.workers))
                if self.watch:
                    watcher = ConfigWatcher([Path(p) for p in self.paths], self._reload_on_change)
                    await watcher.start()
                await stopping.wait()
                log.info("stopping", workers=len(self.workers), grace=settings.shutdown_grace,
                         hint="a second signal stops at once")
            finally:
                self.stopping = True
                if watcher is not None:
                    await watcher.stop()
                self.signal_workers(signal.SIGTERM)
                await self._wait_workers(stopping.hurry)
                if self.admin is not None:
                    await self.admin.stop()
                for service in self.echo_services:
                    await service.stop()
                for held in self.holders.values():
                    held.close()
                if self._own_metrics_dir and self.metrics_dir is not None:
                    shutil.rmtree(self.metrics_dir, ignore_errors=True)
                for task in list(self._tasks):
                    task.cancel()
        log.info("stopped")
        return 0

    def _metrics_dir(self) -> None:
        """The directory prometheus_client's multiprocess mode shares between workers: the operator's
        PROMETHEUS_MULTIPROC_DIR, or a fresh one for this run (removed at exit); the workers inherit it."""
        self.metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not self.metrics_dir:
            self.metrics_dir = tempfile.mkdtemp(prefix="wsgate-metrics-")
            self._own_metrics_dir = True
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir

    def _reload_metrics(self) -> ReloadMetrics:
        """The reload series, in the workers' shared directory: the supervisor decides reloads, so it counts
        them (once per reload; its workers count none)."""
        from prometheus_client import CollectorRegistry, values

        from ..operations.metrics import ReloadMetrics

        if values.ValueClass is values.MutexValue:
            # prometheus_client picks its value class when first imported, and this process imported it before
            # the directory existed (the command line loads the runtime): no series exists here yet, so switch
            # to the directory's files now, or these counts would stay in this process.
            values.ValueClass = values.get_value_class()
        metrics = ReloadMetrics(CollectorRegistry())
        metrics.loaded()
        return metrics

    def _forget_metrics(self, pid: int) -> None:
        """A dead worker's live gauges must not count any more (its counters stay, as prometheus_client wants)."""
        from prometheus_client import multiprocess

        if self.metrics_dir:
            multiprocess.mark_process_dead(pid, self.metrics_dir)

    async def _wait_workers(self, hurry: asyncio.Event) -> None:
        processes = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        if not processes:
            return
        waiting: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(p.wait() for p in processes)))
        hurried: asyncio.Future[Any] = asyncio.ensure_future(hurry.wait())
        await asyncio.wait([waiting, hurried], return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            self.signal_workers(signal.SIGTERM)  # their second signal: close at once
            await waiting
        hurried.cancel()


def _add_counts(total: dict[str, Any], counts: Mapping[str, Any]) -> None:
    for key, value in counts.items():
        if isinstance(value, Mapping):
            _add_counts(total.setdefault(key, {}), value)
        elif isinstance(value, int | float):
            total[key] = total.get(key, 0) + value


def run(config: Config, count: int, args: Any, check_cache: CheckCache | None = None) -> int:
    """``wsgate run PATH --workers N`` (N > 1) after the config was checked."""
    from ..common.log import configure_logging
    from ..serving.runtime import parse_address

    log_format = getattr(args, "log_format", None) or config.settings.log_format
    configure_logging(log_format)
    admin_text = getattr(args, "admin", None)
    path = getattr(args, "path", None)
    supervisor = Supervisor(config, count, paths=[path] if isinstance(path, str) else None,
                            admin=parse_address(admin_text) if isinstance(admin_text, str) else None,
                            log_format=log_format, check_cache=check_cache)
    return asyncio.run(supervisor.run())
