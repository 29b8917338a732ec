"""Helpers for the push tests: a backend that tells each client its connection id, APIs with `push`, and a small
push API client (aiohttp)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from support import TIMEOUT, api_yaml
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve

KEY = "push-key-for-tests"
OTHER_KEY = "another-apis-push-key"

PUSH_GATEWAY = """\
kind: Gateway
name: gw
push:
  host: 127.0.0.1
  port: 0
"""


def push_api(name: str, path: str, url: str, *, key: str = KEY, groups: str = "", extra: str = "",
             push_extra: str = "") -> str:
    """An API with a push block whose one credential is ``key`` (plain text: tests only)."""
    block = f"push:\n  credentials:\n    - name: backend\n      key: {key}\n"
    if groups:
        block += "  groups:\n" + textwrap.indent(textwrap.dedent(groups).strip("\n"), "    ") + "\n"
    if push_extra:
        block += textwrap.indent(textwrap.dedent(push_extra).strip("\n"), "  ") + "\n"
    return api_yaml(name, path, url, extra=block + textwrap.dedent(extra))


@asynccontextmanager
async def id_backend() -> AsyncIterator[str]:
    """A websockets upstream that first tells each client its gateway connection id (as JSON), then echoes."""

    async def handle(ws: ServerConnection) -> None:
        assert ws.request is not None
        await ws.send(json.dumps({"id": ws.request.headers["X-Gateway-Connection-Id"]}))
        async for message in ws:
            await ws.send(message)

    async with serve(handle, "127.0.0.1", 0, compression=None) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def connection_id(ws: ClientConnection) -> str:
    """The id the id backend announced to this client."""
    return str(json.loads(await ws.recv())["id"])


class PushClient:
    """The push API of one gateway process, as a backend calls it."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str = KEY) -> None:
        self.session = session
        self.base = base
        self.key = key

    async def call(self, method: str, path: str, body: bytes | str | None = None, *, key: str | None = None,
                   content_type: str = "text/plain", params: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        if (key if key is not None else self.key):
            headers["Authorization"] = f"Bearer {key if key is not None else self.key}"
        async with self.session.request(method, self.base + path, data=body, headers=headers, params=params,
                                        timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as response:
            return response.status, await response.json()

    async def send(self, api: str, connection: str, body: bytes | str, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", f"/apis/{api}/connections/{connection}/messages", body, **kw)

    async def get(self, api: str, connection: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", f"/apis/{api}/connections/{connection}", **kw)

    async def close(self, api: str, connection: str, code: int = 1000, reason: str = "") -> tuple[int, Any]:
        return await self.call("DELETE", f"/apis/{api}/connections/{connection}",
                               params={"code": str(code), "reason": reason})

    async def join(self, api: str, group: str, connection: str, leave: bool = False) -> tuple[int, Any]:
        return await self.call("DELETE" if leave else "PUT", f"/apis/{api}/groups/{group}/connections/{connection}")

    async def publish(self, api: str, group: str | None, body: bytes | str, **kw: Any) -> tuple[int, Any]:
        path = f"/apis/{api}/groups/{group}/messages" if group is not None else f"/apis/{api}/messages"
        return await self.call("POST", path, body, **kw)


@asynccontextmanager
async def push_client(port: int, key: str = KEY) -> AsyncIterator[PushClient]:
    async with aiohttp.ClientSession() as session:
        yield PushClient(session, f"http://127.0.0.1:{port}", key)
