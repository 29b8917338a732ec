"""One worker process: a Gateway serving the config its supervisor hands it, until a signal or the supervisor's end.

Started as ``python -m gateway.workers.worker FD INDEX`` with FD its end of
the control socketpair (messages: ``gateway.workers.control``). Its own
session (the supervisor started it so), so a Ctrl-C in the terminal reaches
the supervisor only, which forwards stops.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import structlog

from ..common.connection_ids import ids
from ..common.log import configure_logging
from ..edge.listener import raise_open_files_limit
from ..push import forward as push_forward
from ..push.forward import SupervisorRemote
from ..serving.runtime import Gateway, freeze_startup_heap
from ..serving.signals import StopRequest, stop_requested
from . import control

log = structlog.get_logger("wsgate.worker")


def _verdicts(gateway: Gateway) -> tuple[control.Verdict, ...]:
    return tuple(control.Verdict(*verdict) for verdict in gateway.health.verdicts())


async def serve(fd: int, index: int) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd), limit=control.LIMIT)
    hello = await control.receive(reader)
    if not isinstance(hello, control.Start):
        return 1
    if hello.version != control.VERSION:
        control.send(writer, control.Failed(f"control message version {hello.version}, this worker reads "
                                            f"{control.VERSION}: supervisor and worker are different installations"))
        await writer.drain()
        return 1
    configure_logging(hello.log_format)
    structlog.contextvars.bind_contextvars(worker=index)
    ids.as_worker(index)  # connection ids name this worker: <instance>.<index>-<pid>.<n>
    # The supervisor decides (and counts) reloads; this gateway applies what it hands over.
    # Pushes for a sibling's connections go through the supervisor unless Redis carries them (gateway/push).
    remote = SupervisorRemote(lambda message: control.send(writer, message), lambda: ids.owner)
    gateway = Gateway(hello.config, admin=False, echo=False, paths=list(hello.paths), reuse_port=True,
                      port_numbers=hello.ports, decides_reloads=False, push_remote=remote)
    remote.bind(gateway.push.hub)
    # One worker probes for the gateway (the supervisor says which); the others take its verdicts, starting with
    # the current ones, before their routes are compiled.
    gateway.health.probing = hello.probe
    for verdict in hello.verdicts:
        gateway.health.apply_verdict(verdict.api, verdict.url, verdict.active_ok, verdict.reason)
    async with stop_requested() as stopping:
        try:
            await gateway.start(hello.generation)
        except Exception as exc:
            log.exception("worker_start_failed")
            control.send(writer, control.Failed(f"{exc.__class__.__name__}: {exc}"))
            await writer.drain()
            return 1
        control.send(writer, control.Started(os.getpid(), gateway.table.generation,
                                             _verdicts(gateway) if gateway.health.probing else None))
        gateway.health.on_verdict = lambda api, url, ok, reason: control.send(
            writer, control.Verdict(api, url, ok, reason))
        freeze_startup_heap()  # a worker is a process entry point too, like `wsgate run`
        commands = asyncio.create_task(_commands(reader, writer, gateway, stopping, remote))
        reports = asyncio.create_task(_report(writer, gateway))
        try:
            await stopping.wait()
        finally:
            # Still answering and reporting while connections drain: the supervisor's /connections and /metrics
            # show the drain (its /readyz never asks).
            try:
                await gateway.stop(gateway.config.settings.shutdown_grace, stopping.hurry)
            finally:
                commands.cancel()
                reports.cancel()
    return 0


def report(gateway: Gateway) -> control.Report:
    readiness = gateway.readiness()
    return control.Report(readiness.generation, readiness.ready, len(gateway.relayed()), readiness.state)


async def _report(writer: asyncio.StreamWriter, gateway: Gateway) -> None:
    """Tell the supervisor, unasked, what ``/readyz`` shows: it answers from the last report, never by asking."""
    while True:
        control.send(writer, report(gateway))
        await asyncio.sleep(control.REPORT_INTERVAL)


async def _commands(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gateway: Gateway,
                    stopping: StopRequest, remote: SupervisorRemote) -> None:
    while (message := await control.receive(reader)) is not None:
        if isinstance(message, push_forward.Answer | push_forward.Handle | push_forward.Deliver):
            remote.takes(message)  # push messages for this worker's connections (gateway/push/forward.py)
            continue
        if isinstance(message, control.Verdict):  # the prober's news, handed on: no reply
            gateway.health.apply_verdict(message.api, message.url, message.active_ok, message.reason)
            continue
        if isinstance(message, control.Served):  # the supervisor's reload outcome: wsgate_config_info (no reply)
            gateway.metrics.config_served(message.digest, message.commit, failed=message.failed)
            continue
        if not isinstance(message, control.Apply | control.StatusRequest | control.TakeProbing | control.Close):
            continue
        reply: control.Reply
        try:
            reply = await answer(gateway, message)
        except Exception as exc:  # a bug: say so to the supervisor, keep serving
            log.exception("worker_command_failed", request=type(message).__name__)
            reply = control.RequestFailed(message.id, f"{exc.__class__.__name__}: {exc}", gateway.table.generation)
        control.send(writer, reply)
    log.warning("supervisor_gone", hint="stopping")  # the supervisor died: nobody restarts us or forwards signals
    stopping.signalled()


async def answer(gateway: Gateway, request: control.Request) -> control.Reply:
    """The reply to one of the supervisor's requests."""
    if isinstance(request, control.TakeProbing):  # the prober died: this worker probes for the gateway from now on
        log.info("probing_taken_over")
        gateway.health.set_probing(True)
        return control.ProbingTaken(request.id, _verdicts(gateway))
    if isinstance(request, control.Close):
        return control.Closed(request.id, await gateway.close_connection(request.connection, request.code,
                                                                         request.reason))
    if isinstance(request, push_forward.Handle):  # the command loop hands these to the push remote
        raise TypeError("a push Handle reached the command loop")
    if isinstance(request, control.Apply):
        gateway.port_numbers = request.ports
        outcome = await gateway.reload("supervisor", checked=request.config, generation=request.generation)
        # The prober's verdicts after the reload: the supervisor forgets those of endpoints it removed.
        return control.Applied(request.id, gateway.table.generation, outcome,
                               _verdicts(gateway) if gateway.health.probing else None)
    gateway.flush_metrics()  # the supervisor's /metrics reads the shared directory right after
    return control.Status(request.id, os.getpid(), gateway.table.generation, gateway.table.digest, gateway.ready,
                          gateway.health.probing, gateway.reload_count, await gateway.connections_snapshot(),
                          await gateway.upstreams_snapshot(), gateway.readiness().state)


def main() -> int:
    fd, index = int(sys.argv[1]), int(sys.argv[2])
    raise_open_files_limit()
    return asyncio.run(serve(fd, index))


if __name__ == "__main__":
    sys.exit(main())
