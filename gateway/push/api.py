"""The push API: backends send to, close, describe and group the clients' connections over HTTP.

Served with aiohttp.web on the Gateway's ``push`` listener (its own address,
optionally TLS or mTLS), apart from the operators' admin: who may call it is
decided per API by the API's ``push.credentials`` (``Authorization: Bearer
KEY``). Routes, shaped like AWS API Gateway's ``@connections`` and Azure Web
PubSub's groups (docs/push.md)::

    POST   /apis/{api}/connections/{id}/messages        send (text, or binary with application/octet-stream)
    DELETE /apis/{api}/connections/{id}?code=&reason=   close
    GET    /apis/{api}/connections/{id}                 describe
    PUT    /apis/{api}/groups/{group}/connections/{id}  join  (DELETE: leave)
    POST   /apis/{api}/groups/{group}/messages          publish to a group
    POST   /apis/{api}/messages                         broadcast to every connection of the API

Every refusal is a short JSON ``{"error", "reason"}``, like the gateway's
refused upgrades. The API's push settings and credentials are read from the
route table serving new upgrades, so a reload that revokes a credential
refuses its next request and disturbs no client.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from .credentials import bearer, credential_for
from .dispatch import Dispatcher
from .messages import CloseOne, Describe, Join, Publish, Reply, Send

if TYPE_CHECKING:
    from ..build.routes import CompiledAPI, RouteTable

log = structlog.get_logger("wsgate.push")

DEFAULT_MAX_BODY = 1 << 20
# Close codes a backend may ask for: 1000 and the application range; the protocol's own codes are the gateway's.
ALLOWED_CLOSE = (1000, 1001, 1008, 1011, 1013)


def _json(reply: Reply) -> web.Response:
    return web.json_response(reply.body, status=reply.status)


def _error(status: int, error: str, reason: str) -> web.Response:
    return _json(Reply.error(status, error, reason))


class PushAPI:
    """The aiohttp application and its listener."""

    def __init__(self, dispatcher: Dispatcher, table: Callable[[], RouteTable], *,
                 env: Mapping[str, str] | None = None) -> None:
        self.dispatcher = dispatcher
        self.table = table
        self.env = env
        self.runner: web.AppRunner | None = None
        self.port = 0
        app = web.Application(client_max_size=DEFAULT_MAX_BODY + 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post("/apis/{api}/connections/{id}/messages", self._send)
        app.router.add_delete("/apis/{api}/connections/{id}", self._close)
        app.router.add_get("/apis/{api}/connections/{id}", self._describe)
        app.router.add_put("/apis/{api}/groups/{group}/connections/{id}", self._join)
        app.router.add_delete("/apis/{api}/groups/{group}/connections/{id}", self._leave)
        app.router.add_post("/apis/{api}/groups/{group}/messages", self._publish)
        app.router.add_post("/apis/{api}/messages", self._broadcast)
        app.middlewares.append(self._json_errors)
        self.app = app

    # --------------------------------------------------------------- lifecycle
    async def start(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                    reuse_port: bool = False) -> None:
        # access_log off: a request line holds connection ids, and the push path logs its own decisions.
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None)
        await site.start()
        address = self.runner.addresses[0]
        self.port = address[1]
        log.info("listening", name="push", host=address[0], port=self.port, tls=ssl_context is not None)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # ------------------------------------------------------------- middleware
    @web.middleware
    async def _json_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """aiohttp's own refusals (404 route, 405 method, 413 body) as short JSON too."""
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "too_large", "the message is larger than the API's max_message_size")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            word = exc.reason.lower().replace(" ", "_")
            return _error(exc.status, word, exc.reason)

    # ----------------------------------------------------------------- checks
    def _api(self, request: web.Request) -> tuple[CompiledAPI | None, web.Response | None]:
        """The API named in the path if the request's key may reach it, else the refusal."""
        name = request.match_info["api"]
        route = self.table().apis.get(name)
        push = route.api.push if route is not None else None
        presented = bearer(request.headers.get("Authorization"))
        if route is None or push is None:
            # The same answer with or without a key: which APIs exist is not for unauthenticated callers.
            return None, _error(404, "not_found", "no API with push at this path")
        if not presented:
            return None, web.json_response({"error": "unauthorized", "reason": "a push credential is required"},
                                           status=401, headers={"WWW-Authenticate": 'Bearer realm="wsgate push"'})
        if credential_for(push, presented, os.environ if self.env is None else self.env) is None:
            log.info("push_refused", api=name, reason="credential not valid for this API",
                     peer=request.remote)
            return None, _error(403, "forbidden", "this credential does not reach this API's connections")
        return route, None

    async def _payload(self, request: web.Request, route: CompiledAPI) -> tuple[bool, bytes] | web.Response:
        limit = route.api.limits.max_message_size or DEFAULT_MAX_BODY
        if request.content_length is not None and request.content_length > limit:
            return _error(413, "too_large", f"the message is larger than the API's max_message_size ({limit})")
        data = await request.content.read(limit + 1)
        if len(data) > limit:
            return _error(413, "too_large", f"the message is larger than the API's max_message_size ({limit})")
        kind = request.query.get("type")
        if kind not in (None, "text", "binary"):
            return _error(400, "bad_request", "`type` is `text` or `binary`")
        is_text = kind == "text" or (kind is None and request.content_type != "application/octet-stream")
        if is_text:
            try:
                data.decode()
            except UnicodeDecodeError:
                return _error(400, "bad_request", "a text message must be UTF-8 (send binary as "
                              "application/octet-stream)")
        return is_text, data

    def _count(self, api: str, operation: str, reply: Reply) -> web.Response:
        self.dispatcher.hub.stats.requests[(api, operation, str(reply.status))] += 1
        return _json(reply)

    # ----------------------------------------------------------------- routes
    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _send(self, request: web.Request) -> web.Response:
        route, refused = self._api(request)
        if route is None:
            return refused or _error(404, "not_found", "no such API")
        payload = await self._payload(request, route)
        if isinstance(payload, web.Response):
            return payload
        is_text, data = payload
        reply = await self.dispatcher.call(Send(route.name, request.match_info["id"], is_text, data))
        return self._count(route.name, "send", reply)

    async def _close(self, request: web.Request) -> web.Response:
        route, refused = self._api(request)
        if route is None:
            return refused or _error(404, "not_found", "no such API")
        try:
            code = int(request.query.get("code", "1000"))
        except ValueError:
            code = -1
        if code not in ALLOWED_CLOSE and not 4000 <= code <= 4999:
            return _error(400, "bad_request", "`code` is 1000, 1001, 1008, 1011, 1013 or 4000-4999")
        reason = request.query.get("reason", "")
        if len(reason.encode()) > 123:
            return _error(400, "bad_request", "`reason` is at most 123 bytes of UTF-8")
        reply = await self.dispatcher.call(CloseOne(route.name, request.match_info["id"], code, reason))
        return self._count(route.name, "close", reply)

    async def _describe(self, request: web.Request) -> web.Response:
        route, refused = self._api(request)
        if route is None:
            return refused or _error(404, "not_found", "no such API")
        reply = await self.dispatcher.call(Describe(route.name, request.match_info["id"]))
        return self._count(route.name, "get", reply)

    async def _group_change(self, request: web.Request, leave: bool) -> web.Response:
        route, refused = self._api(request)
        if route is None:
            return refused or _error(404, "not_found", "no such API")
        group = request.match_info["group"]
        if not group or len(group) > 256:
            return _error(400, "bad_request", "a group name is 1 to 256 characters")
        reply = await self.dispatcher.call(Join(route.name, request.match_info["id"], group, leave))
        return self._count(route.name, "leave" if leave else "join", reply)

    async def _join(self, request: web.Request) -> web.Response:
        return await self._group_change(request, leave=False)

    async def _leave(self, request: web.Request) -> web.Response:
        return await self._group_change(request, leave=True)

    async def _publish(self, request: web.Request) -> web.Response:
        return await self._fan_out(request, request.match_info["group"])

    async def _broadcast(self, request: web.Request) -> web.Response:
        return await self._fan_out(request, None)

    async def _fan_out(self, request: web.Request, group: str | None) -> web.Response:
        route, refused = self._api(request)
        if route is None:
            return refused or _error(404, "not_found", "no such API")
        payload = await self._payload(request, route)
        if isinstance(payload, web.Response):
            return payload
        is_text, data = payload
        reply = await self.dispatcher.publish(Publish(route.name, group, is_text, data))
        return self._count(route.name, "publish" if group is not None else "broadcast", reply)
