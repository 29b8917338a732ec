"""The echo broadcaster: one websockets server per ``EchoServer`` resource.

``EchoService`` serves the contexts of one model, the demo page and the
control endpoints on one port, and follows a changed model through
:meth:`EchoService.apply` without restarting its listener. ``run`` is what
``wsgate echo PATH`` calls; the gateway runtime starts echo servers in its
own loop with :func:`serve_echo_servers`.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from gateway.config.models import EchoContext, EchoServer
from gateway.config.tree import Config
from gateway.edge.accept import AcceptLoop
from gateway.serving.signals import stop_requested

from .control import (
    CONTROL_PATHS,
    MAX_UNDECLARED_CONTEXTS,
    PAGE_PATHS,
    control_response,
    load_static,
    page_response,
    response,
)
from .link import gateway_link
from .rooms import Client, Room

log = structlog.get_logger("wsgate.echo")

DEFAULT_USER = "anonymous"


class EchoService:
    """The echo server of one ``EchoServer`` model.

    ``port`` overrides the model's port (0 binds a free one; read it back from
    :attr:`port` once started), for tests and embedding.
    """

    def __init__(self, model: EchoServer, *, port: int | None = None) -> None:
        self.model = model
        self._bind_port = model.port if port is None else port
        self.rooms: dict[str, Room] = {c.path: Room(c) for c in model.contexts}
        self._static = load_static()
        self._server: Server | None = None
        # The gateway route the demo page's "Use gateway" button opens (echo/link.py), from the serving config.
        self.gateway: dict[str, object] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # websockets' Server (handshake, process_request, close with 1001) on the gateway's bounded accept loop,
        # not on loop.create_server's, which logs a traceback per failed accept when descriptors run out
        # (gateway/accept.py). Not awaited: a Server given its listener never calls create_server.
        server = serve(self._handle, self.model.host, self._bind_port, process_request=self._process_request,
                       compression=None,  # deflate costs throughput and memory; nothing here needs it
                       max_size=self.model.max_message_size)
        max_size = self.model.max_message_size

        def protocol() -> ServerConnection:
            return ServerConnection(ServerProtocol(max_size=max_size, logger=server.logger), server)

        listener = await AcceptLoop.open(f"echo:{self.model.name}", protocol, self.model.host, self._bind_port,
                                         backlog=1024)
        server.server = listener  # type: ignore[assignment]  # the asyncio.Server surface websockets uses
        self._server = server
        log.info(
            "echo_server_listening",
            server=self.model.name,
            url=f"http://{self.display_host}:{self.port}/",
            contexts=[path for path, room in self.rooms.items() if room.published],
        )

    async def stop(self) -> None:
        """Stop listening and close every client with 1001; wait until they are gone."""
        if self._server is None:
            return
        self._server.close()  # 1001 to open connections, 503 to half-open ones
        await self._server.wait_closed()
        self._server = None
        log.info("echo_server_stopped", server=self.model.name)

    @property
    def port(self) -> int:
        """The port actually bound (the model's, or a free one when started with port 0)."""
        if self._server is None:
            raise RuntimeError("the echo server is not started")
        return self._server.sockets[0].getsockname()[1]

    @property
    def display_host(self) -> str:
        return "127.0.0.1" if self.model.host in ("", "0.0.0.0") else self.model.host

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        return f"{scheme}://{self.display_host}:{self.port}{path}"

    # -------------------------------------------------------- run-time changes

    def apply(self, model: EchoServer) -> None:
        """Follow a changed model without restarting the listener.

        Removed contexts are unpublished (clients closed with 1001); new ones
        are added; a changed one takes its new definition and its ``published``
        flag. The run-time state of what the change does not touch is kept
        (the drift rule, docs/drift.md): an unchanged context stopped or
        started over HTTP keeps that state, and a context started over HTTP
        without being declared stays until stopped over HTTP, declared by the
        config (then the config's definition wins) or the server restarts.
        Host and port cannot change in place: that raises ``ValueError``.
        """
        if (model.host, model.port) != (self.model.host, self.model.port):
            raise ValueError(
                f"echo server {model.name}: host/port changed "
                f"({self.model.host}:{self.model.port} → {model.host}:{model.port}); restart it"
            )
        undeclared = self.undeclared  # against the model served until now
        rooms: dict[str, Room] = {}
        for context in model.contexts:
            room = self.rooms.get(context.path)
            if room is None:
                room = Room(context)
                log.info("echo_context_added", server=model.name, path=context.path, published=room.published)
            elif context.path in undeclared or room.context != context:
                room.update(context)
                self._set_published(room, context.published)
            rooms[context.path] = room
        for path, room in self.rooms.items():
            if path in rooms:
                continue
            if path in undeclared:
                rooms[path] = room  # drift the config does not speak about: kept
            else:
                self.unpublish(room)
                log.info("echo_context_removed", server=model.name, path=path)
        self.rooms = rooms
        self.model = model

    @property
    def undeclared(self) -> set[str]:
        """Contexts started over HTTP that the config (the model being served) does not declare."""
        return self.rooms.keys() - {c.path for c in self.model.contexts}

    def start_undeclared(self, path: str) -> Room | None:
        """Publish a context the config does not declare (the tutorial's startDemoAPI); None past the cap."""
        if len(self.undeclared) >= MAX_UNDECLARED_CONTEXTS:
            log.warning("echo_drift_refused", server=self.model.name, path=path, limit=MAX_UNDECLARED_CONTEXTS)
            return None
        room = Room(EchoContext(path=path))
        self.rooms[path] = room
        log.warning("echo_drift", server=self.model.name, path=path, change="started over HTTP, not declared",
                    hint="declare the context in the EchoServer resource to make it config")
        return room

    def drift(self) -> list[dict[str, object]]:
        """Where the running contexts differ from the config: started without being declared, or published
        or unpublished over HTTP against the config's `published`."""
        declared = {c.path: c for c in self.model.contexts}
        out: list[dict[str, object]] = []
        for path, room in sorted(self.rooms.items()):
            context = declared.get(path)
            if context is None:
                out.append({"path": path, "declared": False, "published": room.published,
                            "change": "started over HTTP, not declared"})
            elif room.published != context.published:
                out.append({"path": path, "declared": True, "published": room.published,
                            "change": "started over HTTP" if room.published else "stopped over HTTP"})
        return out

    def publish(self, room: Room) -> None:
        if not room.published:
            room.publish()
            log.info("echo_context_published", server=self.model.name, path=room.path)
            self._log_drift(room)

    def unpublish(self, room: Room) -> None:
        if room.published:
            room.unpublish()
            log.info("echo_context_unpublished", server=self.model.name, path=room.path, closing=len(room.clients))
            self._log_drift(room)

    def _log_drift(self, room: Room) -> None:
        declared = next((c for c in self.model.contexts if c.path == room.path), None)
        if declared is not None and declared.published != room.published:
            log.warning("echo_drift", server=self.model.name, path=room.path,
                        change="started over HTTP" if room.published else "stopped over HTTP",
                        hint="a reload keeps it; set `published` in the config to make it config")

    def _set_published(self, room: Room, published: bool) -> None:
        (self.publish if published else self.unpublish)(room)

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path
        room = self.rooms.get(path)
        published = room is not None and room.published
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            if self.model.control and path in CONTROL_PATHS:
                query = parse_qs(url.query)
                return control_response(path, query, self.rooms, self.publish, self.unpublish, self.start_undeclared)
            if path in PAGE_PATHS:
                return page_response(PAGE_PATHS[path], self._static, self.rooms.values(), self.gateway)
            if published:
                return None  # websockets answers a plain GET with 426 Upgrade Required
        if not published:
            return response(404, f"no published context at {path}\n".encode(), "text/plain; charset=utf-8")
        # Read per connection, so a changed limit applies to new connections.
        conn.protocol.max_message_size = self.model.max_message_size
        return None

    # ------------------------------------------------------------- WebSocket

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # websockets sets it before calling the handler
        url = urlsplit(ws.request.path)
        room = self.rooms.get(url.path)
        if room is None or not room.published:
            # Unpublished between the upgrade check and now.
            await ws.close(1001, "context unpublished")
            return
        user = parse_qs(url.query).get("user", [""])[0] or DEFAULT_USER
        echo = room.context.mode == "echo"
        client = Client(ws, user, None if echo else self.model.max_queue)
        room.join(client)
        try:
            if echo:
                # The benchmark path: nothing between receive and send.
                async for message in ws:
                    await ws.send(message)
            else:
                async for message in ws:
                    if isinstance(message, str):
                        message = f"Message Received from {user}: {message}"
                    room.broadcast(message)
                    # recv() does not yield while messages are buffered, so a burst
                    # read in one chunk would fill every queue before any writer
                    # ran and close fast clients as slow. One loop turn per message
                    # lets the writers keep up; the echo path above does not pay it.
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        finally:
            room.leave(client)


async def serve_echo_servers(config: Config) -> list[EchoService]:
    """Start every echo server of a config; if one cannot start, stop the others and raise."""
    services: list[EchoService] = []
    try:
        for loaded in config.echo_servers.values():
            service = EchoService(loaded.model)
            service.gateway = gateway_link(config, loaded.model)
            try:
                await service.start()
            except OSError as exc:  # named, so that the caller's one line says which server and address
                model = loaded.model
                raise OSError(exc.errno, f"echo server '{model.name}' cannot listen on {model.host}:{model.port}: "
                                         f"{exc.strerror or exc}") from exc
            services.append(service)
    except BaseException:
        await asyncio.gather(*(s.stop() for s in services))
        raise
    return services


async def serve_until_signal(config: Config) -> int:
    """Run the config's echo servers until SIGINT or SIGTERM, then stop them cleanly."""
    if not config.echo_servers:
        log.error("no_echo_server", root=str(config.root))
        return 1
    async with stop_requested() as stopping:
        services = await serve_echo_servers(config)
        try:
            await stopping.wait()
            log.info("echo_servers_stopping")
        finally:
            await asyncio.gather(*(s.stop() for s in services))
    return 0


def run(config: Config, args: object = None) -> int:
    """``wsgate echo PATH``: serve the config's echo servers until a signal; 0 on a clean stop."""
    return asyncio.run(serve_until_signal(config))
