"""One worker process: a Gateway serving the config its supervisor hands it, until a signal or the supervisor's end.

Started as ``python -m gateway.workers.worker FD INDEX`` with FD its end of
the control socketpair. Its own session (the supervisor started it so), so a
Ctrl-C in the terminal reaches the supervisor only, which forwards stops.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

import structlog

from ..common.connection_ids import ids
from ..operations.admin import upstreams
from ..push.forward import SupervisorRemote
from ..serving.runtime import Gateway, freeze_startup_heap
from ..serving.signals import StopRequest, stop_requested
from . import control

log = structlog.get_logger("wsgate.worker")


async def serve(fd: int, index: int) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd), limit=control.LIMIT)
    hello = await control.receive(reader)
    if hello is None or hello.get("op") != "start":
        return 1
    from ..common.log import configure_logging

    configure_logging(hello["log_format"])
    structlog.contextvars.bind_contextvars(worker=index)
    ids.as_worker(index)  # connection ids name this worker: <instance>.<index>-<pid>.<n>
    config = control.unpack_config(hello["config"])
    # The supervisor decides (and counts) reloads; this gateway applies what it hands over.
    # Pushes for a sibling's connections go through the supervisor unless Redis carries them (gateway/push).
    remote = SupervisorRemote(lambda message: control.send(writer, message), lambda: ids.owner)
    gateway = Gateway(config, admin=False, echo=False, paths=hello["paths"], reuse_port=True,
                      port_numbers=hello["ports"], decides_reloads=False, push_remote=remote)
    remote.bind(gateway.push.hub)
    # One worker probes for the gateway (the supervisor says which); the others take its verdicts, starting with
    # the current ones, before their routes are compiled.
    gateway.health.probing = bool(hello.get("probe", True))
    for api, url, active_ok, reason in hello.get("verdicts", ()):
        gateway.health.apply_verdict(api, url, active_ok, reason)
    async with stop_requested() as stopping:
        try:
            await gateway.start(hello["generation"])
        except Exception as exc:
            log.exception("worker_start_failed")
            control.send(writer, {"op": "failed", "error": f"{exc.__class__.__name__}: {exc}"})
            await writer.drain()
            return 1
        control.send(writer, {"op": "started", "pid": os.getpid(), "generation": gateway.table.generation,
                              "verdicts": gateway.health.verdicts() if gateway.health.probing else None})
        gateway.health.on_verdict = lambda api, url, ok, reason: control.send(
            writer, {"op": "verdict", "api": api, "url": url, "active_ok": ok, "reason": reason})
        freeze_startup_heap()  # a worker is a process entry point too, like `wsgate run`
        commands = asyncio.create_task(_commands(reader, writer, gateway, stopping, remote))
        try:
            await stopping.wait()
        finally:
            commands.cancel()
            await gateway.stop(gateway.config.settings.shutdown_grace, stopping.hurry)
    return 0


async def _commands(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gateway: Gateway,
                    stopping: StopRequest, remote: SupervisorRemote) -> None:
    while (message := await control.receive(reader)) is not None:
        if remote.takes(message):  # push messages for this worker's connections (gateway/push/forward.py)
            continue
        if message["op"] == "verdict":  # the prober's news, handed on: no reply
            gateway.health.apply_verdict(message["api"], message["url"], message["active_ok"], message["reason"])
            continue
        if message["op"] == "served":  # the supervisor's reload outcome: wsgate_config_info says it (no reply)
            gateway.metrics.config_served(message["digest"], message["commit"], failed=message["failed"])
            continue
        reply: dict[str, Any] = {"id": message.get("id")}
        try:
            if message["op"] == "probe":  # the prober died: this worker probes for the gateway from now on
                log.info("probing_taken_over")
                gateway.health.set_probing(True)
                reply.update(ok=True, verdicts=gateway.health.verdicts())
            elif message["op"] == "apply":
                gateway.port_numbers = message["ports"]
                outcome = await gateway.reload("supervisor", checked=control.unpack_config(message["config"]),
                                               generation=message["generation"])
                # The prober's verdicts after the reload: the supervisor forgets those of endpoints it removed.
                reply.update(ok=outcome["ok"], outcome=outcome,
                             verdicts=gateway.health.verdicts() if gateway.health.probing else None)
            elif message["op"] == "status":
                reply.update(status(gateway))
        except Exception as exc:  # a bug: say so to the supervisor, keep serving
            log.exception("worker_command_failed", op=message.get("op"))
            reply.update(ok=False, error=f"{exc.__class__.__name__}: {exc}")
        reply.setdefault("generation", gateway.table.generation)
        control.send(writer, reply)
    log.warning("supervisor_gone", hint="stopping")  # the supervisor died: nobody restarts us or forwards signals
    stopping.signalled()


def status(gateway: Gateway) -> dict[str, Any]:
    assert gateway.state is not None
    gateway.flush_metrics()  # the supervisor's /metrics reads the shared directory right after
    health = gateway.state.shared.health()
    return {"pid": os.getpid(), "generation": gateway.table.generation, "digest": gateway.table.digest,
            "ready": gateway.ready, "connections": gateway.registry.counts(),
            "upstreams": upstreams(gateway)[1], "probing": gateway.health.probing,
            "state": health,
            "reloads": gateway.reload_count}


def main() -> int:
    fd, index = int(sys.argv[1]), int(sys.argv[2])
    from ..edge.listener import raise_open_files_limit

    raise_open_files_limit()
    return asyncio.run(serve(fd, index))


if __name__ == "__main__":
    sys.exit(main())
