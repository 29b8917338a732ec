"""The ops dashboard on the admin listener, in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM, TIMEOUT, LoopThread, chromium
from support import app_yaml

from gateway.serving.view import ReloadOutcome

pytestmark = pytest.mark.browser

DOCS = Path(__file__).resolve().parent.parent / "docs"
WRITE_SCREENSHOTS = os.environ.get("WSGATE_SCREENSHOTS") == "1"  # refresh docs/dashboard*.png
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1200, "height": 820}
KEY = "dashboard-key"
TREE = """\
---
kind: Port
name: default
port: 0
host: 127.0.0.1
---
kind: API
name: Echo
path: /echo
ports: [default]
upstream:
  endpoints:
    - url: {echo}/echo/
policies:
  - type: identify
---
kind: API
name: Chat
path: /chat
ports: [default]
upstream:
  endpoints:
    - url: ws://127.0.0.1:{dead}/chat/
"""
TREE += "---\n" + app_yaml(KEY)

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect  # noqa: E402


class Scene:
    """A gateway with two APIs (one behind a dead upstream), one identified client sending steadily."""

    def __init__(self, loop: LoopThread, root: Path) -> None:
        self.loop = loop
        self.root = root
        self.gateway: Any = None
        self.backend: Any = None
        self.client: Any = None
        self.sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import socket

        from support import http_request, upgrade_request
        from websockets.asyncio.client import connect

        from echo.server import EchoService
        from gateway.config import check
        from gateway.config.models import EchoServer
        from gateway.operations.admin import admin_server
        from gateway.serving.runtime import Gateway

        self.backend = EchoService(EchoServer(kind="EchoServer", name="backend", port=8765,
                                              contexts=[{"path": "/echo/", "mode": "echo"}]), port=0)
        await self.backend.start()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            dead = sock.getsockname()[1]
        self.root.mkdir(parents=True, exist_ok=True)
        echo = self.backend.url("/")[: -len("/")]
        (self.root / "gateway.yaml").write_text(TREE.format(echo=echo, dead=dead))
        config = check([self.root]).config
        assert config is not None
        self.gateway = Gateway(config, admin=("127.0.0.1", 0), echo=False, paths=[self.root],
                               admin_server=admin_server)
        await self.gateway.start()
        host, port = self.gateway.addresses["default"]
        self.client = await connect(f"ws://{host}:{port}/echo", additional_headers={"x-Gateway-APIKey": KEY})
        assert (await http_request(f"http://{host}:{port}", upgrade_request("/chat"))).status == 502
        self.sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while True:  # a steady trickle, so that the chart has a rate to show
            await self.client.send("tick")
            await self.client.recv()
            await asyncio.sleep(0.02)

    async def failed_reload(self) -> ReloadOutcome:
        """Break the tree (an API on an undeclared port), reload, and put the good tree back."""
        path = self.root / "gateway.yaml"
        good = path.read_text()
        path.write_text(good.replace("path: /chat\nports: [default]", "path: /chat\nports: [defualt]"))
        try:
            return await self.gateway.reload("test")
        finally:
            path.write_text(good)

    async def stop(self) -> None:
        if self.sender is not None:
            self.sender.cancel()
        if self.client is not None:
            await self.client.close()
        if self.gateway is not None:
            await self.gateway.stop()
        if self.backend is not None:
            await self.backend.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.admin.port}/dashboard/?every=250"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    loop = LoopThread()
    scene = Scene(loop, tmp_path_factory.mktemp("dashboard") / "config")
    try:
        loop.run(scene.start())
        yield scene
    finally:
        loop.run(scene.stop())
        loop.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def open_page(browser: Browser, url: str, viewport: dict[str, int], init: str | None = None) -> Page:
    page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
    page.set_default_timeout(TIMEOUT * 2000)
    if init:
        page.add_init_script(init)
    page.goto(url)
    return page


def test_dashboard_shows_apis_rates_upstreams_reloads_and_the_config(browser: Browser, scene: Scene) -> None:
    """Live connections per application, a moving message rate, upstream health and failures, a failed reload."""
    outcome = scene.loop.run(scene.failed_reload())
    assert not outcome.ok
    page = open_page(browser, scene.url, DESKTOP)
    try:
        expect(page.locator("#generation")).to_have_text("1")
        expect(page.locator("#digest")).to_have_attribute("title", scene.gateway.table.digest)
        echo_acme = page.locator('#apis tr[data-api="Echo"][data-application="acme"] .live')
        expect(echo_acme).to_have_text("1")
        expect(page.locator('#apis tr[data-api="Chat"][data-application=""] .live')).to_have_text("0")
        # The chart's rate moves once two polls saw the client's messages.
        expect(page.locator('.chart[data-api="Echo"] .rate')).to_have_text(re.compile(r"^[1-9][0-9.]*/s$"))
        expect(page.locator('.chart[data-api="Echo"] polyline')).to_have_attribute("points", re.compile(r"\d+,\d"))
        # Health comes from /upstreams (the gateway's health checks), connect failures from /metrics.
        expect(page.locator("#upstreams tr", has_text="Echo").locator(".healthy")).to_have_text("healthy")
        chat = page.locator("#upstreams tr", has_text="Chat")
        expect(chat).to_contain_text("ws://127.0.0.1:")
        expect(chat.locator(".num")).to_have_text("1")
        reloads = page.locator("#reloads")
        expect(reloads.locator(".failed")).to_have_count(1)
        expect(reloads).to_contain_text("gateway.yaml:")
        expect(reloads).to_contain_text("unknown port 'defualt'")
        expect(reloads).to_contain_text("hint:")
        expect(page.locator("#status")).to_have_text("last reload failed")
        if WRITE_SCREENSHOTS:
            page.wait_for_timeout(5000)  # a longer line on the chart for the picture
        shot = page.screenshot(full_page=True)
        assert shot.startswith(b"\x89PNG")
        if WRITE_SCREENSHOTS:
            (DOCS / "dashboard.png").write_bytes(shot)
    finally:
        page.close()


def test_dashboard_fits_a_phone(browser: Browser, scene: Scene) -> None:
    """At 390 px wide nothing scrolls sideways and each panel takes the full width."""
    page = open_page(browser, scene.url, PHONE)
    try:
        expect(page.locator('#apis tr[data-api="Echo"][data-application="acme"] .live')).to_have_text("1")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        for panel in ("#apis-panel", "#rates-panel", "#upstreams-panel", "#reloads-panel"):
            box = page.locator(panel).bounding_box()
            assert box is not None and box["width"] >= PHONE["width"] - 40, (panel, box)
        shot = page.screenshot(full_page=True)
        if WRITE_SCREENSHOTS:
            (DOCS / "dashboard-390.png").write_bytes(shot)
    finally:
        page.close()


def test_dashboard_sends_the_admin_token_it_was_given(browser: Browser, scene: Scene) -> None:
    """A refused request shows the token form; the token entered there goes with every later request."""
    seen: list[str | None] = []
    page = browser.new_page(viewport=DESKTOP)  # type: ignore[arg-type]
    page.set_default_timeout(TIMEOUT * 2000)

    def admin(route: Any) -> None:
        authorization = route.request.headers.get("authorization")
        seen.append(authorization)
        if authorization != "Bearer s3cret":
            route.fulfill(status=401, body='{"error": "unauthorized"}', content_type="application/json")
        else:
            route.continue_()

    try:
        page.route(re.compile(r".*/(metrics|reload|upstreams)$"), admin)
        page.goto(scene.url)
        expect(page.locator("#auth")).to_be_visible()
        page.fill("#token", "s3cret")
        page.click("#auth button")
        expect(page.locator("#auth")).to_be_hidden()
        expect(page.locator('#apis tr[data-api="Echo"][data-application="acme"] .live')).to_have_text("1")
        assert "Bearer s3cret" in seen
        assert page.evaluate("sessionStorage.getItem('wsgate-admin-token')") == "s3cret"
    finally:
        page.close()


def test_dashboard_closes_one_connection(browser: Browser, scene: Scene) -> None:
    """The connections panel lists each connection's id; its close button closes that one with 1008."""

    async def second_client() -> Any:
        from websockets.asyncio.client import connect

        host, port = scene.gateway.addresses["default"]
        return await connect(f"ws://{host}:{port}/echo", additional_headers={"x-Gateway-APIKey": KEY})

    async def closed(ws: Any) -> tuple[int | None, str | None]:
        async with asyncio.timeout(TIMEOUT):
            await ws.wait_closed()
        return ws.close_code, ws.close_reason

    ws = scene.loop.run(second_client())
    ids = {r.conn.id for r in scene.gateway.registry.live if r.relay is not None and r.conn is not None}
    page = open_page(browser, scene.url, DESKTOP)
    try:
        expect(page.locator("#connections tbody tr")).to_have_count(len(ids))
        mine = max(ids, key=lambda i: int(i.rsplit(".", 1)[1]))  # the newest id: its counter is the largest
        row = page.locator("#connections tr", has_text=mine)
        row.locator("button").click()
        assert scene.loop.run(closed(ws)) == (1008, "closed by an operator")
        expect(page.locator("#connections tr", has_text=mine)).to_have_count(0)  # gone at the next poll
    finally:
        page.close()
