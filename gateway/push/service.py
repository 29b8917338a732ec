"""The push part of one gateway process: the hub of its connections, the dispatcher, the push API's listener
and, with ``state: redis``, the Redis transport to the rest of the cluster.

The listener follows the Gateway resource's ``push`` block at start (a
changed address takes a restart, like the admin's); the APIs' push settings
and credentials follow every reload (they are read from the serving route
table per request).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ..build.tls import ServerTLS
from ..common.connection_ids import ids
from ..state.redis import connection_options
from .api import PushAPI
from .cluster import RedisCluster
from .dispatch import Dispatcher, Remote
from .hub import PushHub

if TYPE_CHECKING:
    from ..build.routes import RouteTable
    from ..config.tree import Config
    from ..policies.state import PolicyState

log = structlog.get_logger("wsgate.push")

# The key of the push listener in a supervisor's reserved port numbers (no Port resource can be named so).
PUSH_PORT_KEY = "@push"


class _TLSSource:
    """What ``ServerTLS`` reads of a Port, for the push listener: its ``tls`` block and where paths resolve."""

    def __init__(self, tls: Any, resolve: Callable[[str], Path]) -> None:
        self.model = self
        self.tls = tls
        self.resolve = resolve


class PushService:
    """Everything push in one process; inert until ``start`` (the hub still records groups for the admin)."""

    def __init__(self, table: Callable[[], RouteTable], *, env: Mapping[str, str] | None = None,
                 remote: Remote | None = None) -> None:
        self.hub = PushHub()
        self.dispatcher = Dispatcher(self.hub, lambda: ids.owner, remote)
        self.api = PushAPI(self.dispatcher, table, env=env)
        self.env = env
        self.cluster: RedisCluster | None = None  # the Redis transport, when it is this process's remote
        self.listening = False

    @property
    def port(self) -> int:
        return self.api.port

    async def start(self, config: Config, port_numbers: Mapping[str, int], reuse_port: bool,
                    state: PolicyState | None) -> None:
        settings = config.settings
        has_push = any(loaded.model.push is not None for loaded in config.apis.values())
        if settings.state.backend == "redis" and has_push:
            gateway = config.gateway
            ca = getattr(settings.state, "ca", None)
            ca_file = str(gateway.resolve(ca)) if ca and gateway is not None else None
            env = os.environ if self.env is None else self.env
            self.cluster = RedisCluster(connection_options(settings.state, env, ca_file), self.hub,
                                        lambda: ids.owner, prefix=settings.state.key_prefix,
                                        timeout=settings.state.timeout)
            await self.cluster.start()
            self.dispatcher.remote = self.cluster  # Redis carries cross-worker requests too
        listener = settings.push
        if listener is None or not listener.enabled:
            if has_push:
                log.warning("push_listener_off", hint="APIs declare `push` but the Gateway resource has no "
                            "enabled `push` listener: backends cannot reach their connections")
            return
        context: ssl.SSLContext | None = None
        if listener.tls is not None and config.gateway is not None:
            context = ServerTLS("push", _TLSSource(listener.tls, config.gateway.resolve)).context
        await self.api.start(listener.host, port_numbers.get(PUSH_PORT_KEY, listener.port), ssl_context=context,
                             reuse_port=reuse_port)
        self.listening = True

    async def stop(self) -> None:
        await self.api.stop()
        if self.cluster is not None:
            await self.cluster.close()
            self.cluster = None
