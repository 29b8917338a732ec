"""The supervisor of `wsgate run --workers N`: one checked config handed to every worker, kept alive, drained.

It checks and watches the config tree (once, for all workers), holds every
port before the workers bind it (``ports``: no other gateway may join a
port its workers share; a port configured as 0 gets one number for every
worker), runs the echo servers
and the admin listener, and is the gateway's view (``gateway.serving.view``)
for the admin, which serves it with the same route table as a single
process's: ``/readyz`` and ``/reload`` list the generation each worker
serves (a reload some worker failed to apply is ``split``), ``/connections``
is summed and ``/metrics`` aggregated. ``/readyz`` answers from what the
supervisor holds (its own state, and each worker's last ``Report``), never by
asking a worker: during the shutdown grace workers are busy draining.

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
``PROMETHEUS_MULTIPROC_DIR`` for the workers (unless the operator set one:
in the temporary directory, else ``/dev/shm``; neither writable is one
``start_failed`` line), marks dead workers' files with ``mark_process_dead``,
and serves ``/metrics`` as the aggregation of every worker's files
(``gateway.operations.metrics``), after asking each worker to flush its
batches, plus the ``process_*`` series of itself and of each worker, read
from ``/proc`` and labelled ``worker`` (``supervisor`` or the index).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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

from ..changes.plan import diff
from ..common import connection_ids
from ..common.connection_ids import INSTANCE_ENV, instance_from_environment
from ..common.log import LogFormat, configure_logging
from ..config.cache import CheckCache
from ..config.tree import Config
from ..operations.admin import AdminServer, admin_server
from ..operations.metrics import MULTIPROC_ENV, ReloadMetrics, render_directory, render_processes
from ..push import forward as push_forward
from ..push.service import PUSH_PORT_KEY
from ..serving.reloader import Reloader, ReloadStatus
from ..serving.runtime import parse_address, start_echo_servers
from ..serving.signals import stop_requested
from ..serving.view import (
    ConfigSnapshot,
    ConnectionsSnapshot,
    EndpointState,
    ListedConnection,
    PlanCounts,
    Readiness,
    ReloadOutcome,
    ReloadStatusSnapshot,
    StartError,
    Status,
    UpstreamsSnapshot,
    WorkerEndpoint,
    WorkerState,
)
from ..serving.watch import ConfigWatcher
from . import control
from .ports import PortHold, hold_port

if TYPE_CHECKING:
    from echo.server import EchoService

    from ..build.pipeline import Built

log = structlog.get_logger("wsgate.supervisor")


class WorkerStartError(RuntimeError):
    """A worker process exited, or answered an error, before it served: the supervisor's start fails with one line."""


# Where the workers' metrics directory goes when the temporary directory is not usable (a read-only root
# filesystem): a memory filesystem of its own in containers.
METRICS_DIR_FALLBACKS: tuple[str, ...] = ("/dev/shm",)
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
        self.report: control.Report | None = None  # its last unasked report (connections, state health)
        self._pending: dict[int, asyncio.Future[control.Reply]] = {}
        self._ids = 0
        self.started = asyncio.Event()

    async def request(self, message: control.Request, timeout: float = REQUEST_TIMEOUT) -> control.Reply:
        if self.writer is None or not self.ready:
            return control.RequestFailed(0, "worker not running", self.generation)
        self._ids += 1
        ident = self._ids
        future: asyncio.Future[control.Reply] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        control.send(self.writer, dataclasses.replace(message, id=ident))
        try:
            async with asyncio.timeout(timeout):
                return await future
        except (TimeoutError, ConnectionError) as exc:
            return control.RequestFailed(ident, f"no answer: {exc.__class__.__name__}", self.generation)
        finally:
            self._pending.pop(ident, None)

    def answered(self, message: control.Reply) -> None:
        future = self._pending.pop(message.id, None)
        if future is not None and not future.done():
            future.set_result(message)

    def gone(self) -> None:
        self.ready = False
        self.writer = None
        self.report = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("worker gone"))
        self._pending.clear()

    def describe(self) -> WorkerState:
        return WorkerState(self.index, self.pid, self.generation, self.ready, self.restarts, self.last_error,
                           self.report.connections if self.report is not None and self.ready else None)


class Supervisor(ReloadStatus):
    def __init__(self, config: Config, count: int, *, paths: Sequence[str | Path] | None = None,
                 admin: tuple[str, int] | None = None, log_format: LogFormat = "auto", watch: bool = True,
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
        self.echo_services: list[EchoService] = []
        self.loaded_at = time.time()
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
        self.pids: dict[int, int] = {}  # worker index -> the pid of its process now, for the process_* series

    # ------------------------------------------------------------------ ports
    def reserve_ports(self, config: Config) -> dict[str, int]:
        """A number for every enabled port, held for the workers (``hold_port``: a configured one probed and
        locked, a 0 one given a fresh number); raises StartError when another process holds one."""
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
        control.send(writer, control.Start(self.config, tuple(self.paths), self.generation, dict(self.port_numbers),
                                           self.log_format, probes,
                                           tuple(control.Verdict(api, url, v["active_ok"], v["reason"])
                                                 for (api, url), v in self.verdicts.items())))
        first = await control.receive(reader)
        if not isinstance(first, control.Started):
            if self.prober == worker.index:
                self.prober = None
            worker.last_error = first.error if isinstance(first, control.Failed) else "exited before it started"
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            worker.gone()
            raise WorkerStartError(f"worker {worker.index} did not start: {worker.last_error}")
        worker.generation, worker.ready, worker.last_error = first.generation, True, None
        self.pids[worker.index] = process.pid
        log.info("worker_started", worker=worker.index, pid=process.pid, generation=worker.generation,
                 restarts=worker.restarts, probing=probes)
        for verdict in first.verdicts or ():
            self._verdict(worker, verdict)
        self._spawn_task(self._listen(worker, reader, process), f"wsgate-worker-{worker.index}")

    async def _listen(self, worker: Worker, reader: asyncio.StreamReader, process: asyncio.subprocess.Process) -> None:
        while (message := await control.receive(reader)) is not None:
            if isinstance(message, control.Verdict):
                self._verdict(worker, message)
            elif isinstance(message, control.Report):
                worker.report = message
            elif isinstance(message, push_forward.Forward | push_forward.FanOut):  # for a sibling (gateway/push)
                self._spawn_task(push_forward.supervise(message, worker, self.workers, self.instance,
                                                        self._send_to), "wsgate-push-forward")
            elif isinstance(message, control.Applied | control.Status | control.ProbingTaken | control.Closed
                            | control.RequestFailed | push_forward.Handled):
                worker.answered(message)
        code = await process.wait()
        worker.gone()
        self.pids.pop(worker.index, None)
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
    def _send_to(worker: Any, message: push_forward.Answer | push_forward.Deliver) -> None:
        if worker.writer is not None:
            control.send(worker.writer, message)

    # ----------------------------------------------------------------- health
    def _verdict(self, source: Worker, verdict: control.Verdict) -> None:
        """The prober's active verdict on an endpoint: keep it, and hand a change to every other worker."""
        if source.index != self.prober:  # a former prober's last words: only one worker decides
            return
        key = (verdict.api, verdict.url)
        known = self.verdicts.get(key)
        if known is not None and known["active_ok"] == verdict.active_ok:
            return
        self.verdicts[key] = {"active_ok": verdict.active_ok, "reason": verdict.reason, "since": time.time()}
        if known is None and verdict.active_ok:
            return  # every worker starts optimistic: nothing to hand on
        for worker in self.workers:
            # A worker still starting reads it once it serves: its channel buffers it.
            if worker is not source and worker.writer is not None:
                control.send(worker.writer, verdict)

    def _replace_verdicts(self, verdicts: Sequence[control.Verdict]) -> None:
        """The prober's verdicts after a reload: endpoints it no longer has are forgotten (a stale 'down' must not
        reach a worker started later), the others keep their ``since`` unless the verdict changed."""
        kept: dict[tuple[str, str], dict[str, Any]] = {}
        for verdict in verdicts:
            known = self.verdicts.get((verdict.api, verdict.url))
            if known is None or known["active_ok"] != verdict.active_ok:
                known = {"active_ok": verdict.active_ok, "reason": verdict.reason, "since": time.time()}
            kept[(verdict.api, verdict.url)] = known
        self.verdicts = kept

    async def _hand_probing_over(self, dead: Worker) -> None:
        """The prober died: the lowest-index worker serving probes from now on (else the next one started)."""
        self.prober = None
        for worker in sorted(self.workers, key=lambda w: w.index):
            if worker is dead or not worker.ready:
                continue
            self.prober = worker.index
            log.info("prober_handed_over", worker=worker.index, previous=dead.index)
            reply = await worker.request(control.TakeProbing())
            if isinstance(reply, control.ProbingTaken):
                for verdict in reply.verdicts:
                    self._verdict(worker, verdict)
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
    async def reload(self, trigger: str = "manual") -> ReloadOutcome:
        """Build the tree once (the same build as validate, transforms imported); hand a changed config to every
        worker as the next generation (``gateway.serving.reloader``: the sequence a single gateway runs too)."""
        outcome = await self.reloader.reload(trigger)
        # Every worker's wsgate_config_info says whether the reload failed (a failed one never reaches them).
        served = self.reloader.status()
        message = control.Served(served.digest, served.commit, failed=not outcome.ok)
        for worker in self.workers:
            if worker.writer is not None and worker.ready:
                control.send(worker.writer, message)
        return outcome

    async def _hand_out(self, result: Built, trigger: str, _generation: int | None) -> ReloadOutcome:
        """The supervisor's apply: every worker gets the config as the next generation (each decides what it
        does to its own connections); not one taking it keeps the last good config for new workers."""
        new = result.config
        assert new is not None
        old_config, old_generation = self.config, self.generation
        try:
            ports = self.reserve_ports(new)
        except (OSError, StartError) as exc:
            self.reserve_ports(old_config)
            return ReloadOutcome(ok=False, error=f"cannot reserve a port: {exc}")
        self.config, self.generation = new, old_generation + 1
        message = control.Apply(new, self.generation, ports)
        replies = await asyncio.gather(*(w.request(message) for w in self.workers))
        outcomes: dict[int, ReloadOutcome] = {}
        errors: dict[int, str] = {}
        for worker, reply in zip(self.workers, replies, strict=True):
            if isinstance(reply, control.Applied) and reply.outcome.ok:
                worker.generation = reply.generation
                outcomes[worker.index] = reply.outcome
            else:
                error = (reply.outcome.error if isinstance(reply, control.Applied)
                         else reply.error if isinstance(reply, control.RequestFailed) else None) or "reload failed"
                worker.last_error = errors[worker.index] = error
            if (worker.index == self.prober and isinstance(reply, control.Applied)
                    and reply.verdicts is not None):
                self._replace_verdicts(reply.verdicts)
        problems = [p for outcome in outcomes.values() for p in outcome.problems]
        if not outcomes:  # nobody serves it: keep the last good config for the workers started from now on
            self.config, self.generation = old_config, old_generation
            self.reserve_ports(old_config)
        else:
            self.loaded_at = time.time()
            if self.admin is not None:
                # Its token file and certificate, re-read (a broken one is logged, and kept).
                problems += self.admin.refresh(new)
        log.info("reload_handed_out", trigger=trigger, generation=self.generation, applied=len(outcomes),
                 workers=len(self.workers))
        plan = diff(old_config, new)
        return ReloadOutcome(
            ok=len(outcomes) == len(self.workers), error="; ".join(sorted(set(errors.values()))) or None,
            old_digest=old_config.digest(), problems=tuple(dict.fromkeys(problems)),
            plan=PlanCounts(plan.count("create"), plan.count("update"), plan.count("destroy")),
            drained=sum(o.drained for o in outcomes.values()), revoked=sum(o.revoked for o in outcomes.values()),
            workers_applied=len(outcomes), errors=errors)

    async def _reload_on_change(self, trigger: str) -> None:
        await self.reload(trigger)

    def split(self) -> tuple[bool, tuple[WorkerState, ...]]:
        """Whether the serving workers serve different generations (or not the supervisor's), and every worker."""
        generations = sorted({w.generation for w in self.workers if w.ready})
        return (len(generations) > 1 or any(g != self.generation for g in generations),
                tuple(w.describe() for w in self.workers))

    # ------------------------------------------------------------------- view
    # The admin reads the gateway through ``gateway.serving.view.GatewayView``: the same routes as one process.

    def readiness(self) -> Readiness:
        """From what the supervisor holds: never waits on a worker (they may be draining, or gone)."""
        serving = [w for w in self.workers if w.ready]
        status: Status = "stopping" if self.stopping else "ready" if serving else "starting"
        if status == "ready" and self.reload_failing and self.config.settings.admin.unready_after_failed_reload:
            status = "reload-failed"
        split, workers = self.split()
        return Readiness(status, self.generation, self._state_health(), split, workers, self.config_status)

    def _state_health(self) -> Mapping[str, Any] | None:
        """The shared-state backend's health as the workers last reported it: an unhealthy one's if any worker
        sees it unhealthy (each worker has its own connection to Redis), else the lowest index's."""
        reports = [w.report for w in sorted(self.workers, key=lambda w: w.index) if w.report is not None]
        states = [r.state for r in reports if r.state is not None]
        return next((s for s in states if not s.get("healthy", True)), states[0] if states else None)

    def config_snapshot(self) -> ConfigSnapshot:
        drift = {service.model.name: service.drift() for service in self.echo_services}
        return ConfigSnapshot(self.config, self.config.digest(), self.generation, self.loaded_at,
                              {name: changes for name, changes in drift.items() if changes})

    async def _statuses(self) -> list[tuple[Worker, control.Status]]:
        replies = await asyncio.gather(*(w.request(control.StatusRequest()) for w in self.workers))
        return [(w, r) for w, r in zip(self.workers, replies, strict=True) if isinstance(r, control.Status)]

    async def connections_snapshot(self) -> ConnectionsSnapshot:
        total: dict[str, Any] = {"total": 0, "upgrading": 0, "ports": {}, "apis": {}, "applications": {},
                                 "api_ports": {}, "api_applications": {}}
        records: list[ListedConnection] = []
        for _, status in await self._statuses():
            _add_counts(total, status.connections.counts)
            records.extend(status.connections.connections)
        return ConnectionsSnapshot(total, tuple(records))

    async def close_connection(self, id: str, code: int, reason: str) -> bool:
        """Ask the worker the id names (its index and pid) to close it: a connection of a worker since restarted,
        or of another instance, is held by no worker here."""
        owner = connection_ids.parse(id)
        if owner is None or owner.instance != self.instance:
            return False
        worker = next((w for w in self.workers if w.index == owner.index and w.pid == owner.pid), None)
        if worker is None:
            return False
        reply = await worker.request(control.Close(id, code, reason))
        return isinstance(reply, control.Closed) and reply.found

    async def metrics_text(self) -> bytes:
        await self._statuses()  # each worker flushes its batches into the shared directory as it answers
        assert self.metrics_dir is not None
        processes = {"supervisor": os.getpid(), **{str(index): pid for index, pid in sorted(self.pids.items())}}
        return render_directory(self.metrics_dir) + render_processes(processes)

    async def upstreams_snapshot(self) -> UpstreamsSnapshot:
        """Every endpoint once: the prober's active verdict, and each worker's passive mark and load."""
        merged: dict[str, dict[str, EndpointState]] = {}
        for worker, status in await self._statuses():
            for api, endpoints in status.upstreams.apis.items():
                for seen in endpoints:
                    verdict = self.verdicts.get((api, seen.url)) or {}
                    mine = WorkerEndpoint(worker.index, seen.healthy, seen.passive_cool_down, seen.pending, seen.open)
                    known = merged.setdefault(api, {}).get(seen.url)
                    if known is None:
                        active_ok = verdict.get("active_ok", seen.active_ok)
                        known = EndpointState(seen.url, active_ok, active_ok, verdict.get("since", seen.since),
                                              verdict.get("reason", seen.reason), None, 0.0, 0, 0)
                    # Healthy: every worker gives it new connections (the verdict, and no passive mark anywhere).
                    passive = not seen.healthy and seen.active_ok  # a passive mark: what that worker saw
                    known = dataclasses.replace(
                        known, healthy=known.healthy and seen.healthy,
                        reason=seen.reason if passive else known.reason,
                        last_probe=seen.last_probe if status.probing else known.last_probe,
                        passive_cool_down=max(known.passive_cool_down, seen.passive_cool_down),
                        pending=known.pending + seen.pending, open=known.open + seen.open,
                        workers=(*known.workers, mine))
                    merged[api][seen.url] = known
        return UpstreamsSnapshot({api: tuple(endpoints.values()) for api, endpoints in merged.items()}, self.prober)

    def reload_status(self) -> ReloadStatusSnapshot:
        split, workers = self.split()
        return ReloadStatusSnapshot(self.reload_count, self.last_reload, tuple(self.reload_history), self.generation,
                                    split, workers, self.config_status)

    def accept_error(self, listener: str) -> None:
        """The admin's failed accepts are not counted with workers: the series lives in the workers' files."""

    # -------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        """Serve until a signal; raises ``StartError`` when a port, a worker or the admin listener cannot start."""
        settings = self.config.settings
        if len(self.workers) > 1 and settings.state.backend == "memory":
            log.warning("limits_per_worker", workers=len(self.workers),
                        hint="with state: memory each worker counts every throttle on its own (up to workers x the "
                             "limit in total); set the Gateway's state to redis to share the counts")
        watcher: ConfigWatcher | None = None
        async with stop_requested() as stopping:
            try:
                host, port = self.admin_address or (settings.admin.host, settings.admin.port)
                wanted = self.admin_address is not None or settings.admin.enabled
                # As a single gateway's start: a StartError before anything listens or a worker starts.
                self._metrics_dir()
                self.reloader.metrics = self._reload_metrics()
                admin = admin_server(self, host, port, self.config) if wanted else None
                self.reserve_ports(self.config)
                if self.config.echo_servers:
                    self.echo_services = await start_echo_servers(self.config)
                try:
                    await asyncio.gather(*(self.spawn(w) for w in self.workers))
                except WorkerStartError as exc:  # e.g. a port taken between the hold and the workers' bind
                    raise StartError(str(exc), "the worker's own error is quoted; for a port in use, stop the other "
                                     "process or change `port`/`host` in the Port resource") from exc
                if admin is not None:
                    self.admin = admin
                    try:
                        await self.admin.start()
                    except OSError as exc:
                        self.admin = None
                        raise StartError.admin_cannot_listen(host, port, exc) from exc
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

    def _metrics_dir(self) -> None:
        """The directory prometheus_client's multiprocess mode shares between workers: the operator's
        PROMETHEUS_MULTIPROC_DIR, or a fresh one for this run (removed at exit) in the temporary directory, else
        in /dev/shm (a read-only root filesystem leaves no temporary directory; /dev/shm is a memory filesystem
        of its own); the workers inherit it. Raises StartError when none is writable."""
        self.metrics_dir = os.environ.get(MULTIPROC_ENV)
        if self.metrics_dir:
            if not os.access(self.metrics_dir, os.W_OK | os.X_OK) or not os.path.isdir(self.metrics_dir):
                raise StartError(f"{MULTIPROC_ENV}={self.metrics_dir} is not a writable directory",
                                 "point it at a writable, empty directory (with a read-only root filesystem, an "
                                 "emptyDir volume), or unset it")
            return
        tried: list[str] = []
        for parent in (None, *METRICS_DIR_FALLBACKS):
            try:
                self.metrics_dir = tempfile.mkdtemp(prefix="wsgate-metrics-", dir=parent)
            except OSError as exc:  # FileNotFoundError: no usable temporary directory at all
                tried.append(f"{parent or 'the temporary directory'} ({exc.strerror or exc.__class__.__name__})")
                continue
            self._own_metrics_dir = True
            os.environ[MULTIPROC_ENV] = self.metrics_dir
            return
        raise StartError("no writable directory for the workers' metrics: " + ", ".join(tried),
                         f"mount a writable volume (an emptyDir) and set TMPDIR or {MULTIPROC_ENV} to it")

    def _reload_metrics(self) -> ReloadMetrics:
        """The reload series, in the workers' shared directory: the supervisor decides reloads, so it counts
        them (once per reload; its workers count none)."""
        from prometheus_client import CollectorRegistry, values

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


def run(config: Config, count: int, args: Any, check_cache: CheckCache | None = None) -> None:
    """``wsgate run PATH --workers N`` (N > 1) after the config was checked; raises ``StartError`` (see
    ``Supervisor.run``)."""

    log_format = getattr(args, "log_format", None) or config.settings.log_format
    configure_logging(log_format)
    admin_text = getattr(args, "admin", None)
    path = getattr(args, "path", None)
    supervisor = Supervisor(config, count, paths=[path] if isinstance(path, str) else None,
                            admin=parse_address(admin_text) if isinstance(admin_text, str) else None,
                            log_format=log_format, check_cache=check_cache)
    asyncio.run(supervisor.run())
