"""The demo page in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM, TIMEOUT, LoopThread, chromium

from echo.server import EchoService
from gateway.config.models import EchoServer

pytestmark = pytest.mark.browser

# The README shows this screenshot; refresh it with WSGATE_SCREENSHOTS=1 (off by default so that
# a test run leaves the work tree clean).
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "demo-page.png"
WRITE_SCREENSHOTS = os.environ.get("WSGATE_SCREENSHOTS") == "1"
VIEWPORT = {"width": 1100, "height": 700}

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect  # noqa: E402


@pytest.fixture(scope="module")
def servers() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def echo_service(servers: LoopThread) -> Iterator[EchoService]:
    model = EchoServer(
        kind="EchoServer",
        name="demo-backend",
        port=8765,
        contexts=[
            {"path": "/api/demo/"},
            {"path": "/websocket/demo/"},
            {"path": "/websocket/demo/broadcast/"},
            {"path": "/echo/", "mode": "echo"},
        ],
    )
    service = EchoService(model, port=0)
    servers.run(service.start())
    yield service
    servers.run(service.stop())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def open_demo_page(browser: Browser, echo_service: EchoService) -> Iterator[Callable[..., Page]]:
    """Open the echo server's demo page; ``ws_url`` goes into the URI field, ``gateway`` into ?gateway=."""
    pages: list[Page] = []

    def open_page(ws_url: str | None = None, gateway: str | None = None) -> Page:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(TIMEOUT * 1000)
        pages.append(page)
        query = f"?gateway={gateway}" if gateway else ""
        page.goto(echo_service.url("/", scheme="http") + query)
        if ws_url is not None:
            page.fill("#uri", ws_url)
        return page

    yield open_page
    for page in pages:
        page.close()


def connect_as(page: Page, user: str, api_key: str = "") -> None:
    """Fill user and key, press Connect and wait for the page to say it is connected."""
    page.fill("#user", user)
    page.fill("#apikey", api_key)
    page.click("#connect")
    expect(page.locator("#state")).to_have_text("connected")


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def test_demo_page_chats_with_the_echo_backend(open_demo_page: Callable[..., Page], echo_service: EchoService) -> None:
    """Connected as bob to the prefilled room, 'hello' comes back as 'Message Received from bob: hello'."""
    page = open_demo_page()
    expect(page.locator("#uri")).to_have_value(echo_service.url("/api/demo/"))
    connect_as(page, "bob")
    send(page, "hello")
    log = page.locator("#log")
    expect(log).to_contain_text("→hello")
    expect(log).to_contain_text("←Message Received from bob: hello")
    send(page, "how is everyone?")
    expect(log).to_contain_text("Message Received from bob: how is everyone?")
    shot = page.screenshot()
    assert shot.startswith(b"\x89PNG")
    if WRITE_SCREENSHOTS:
        SCREENSHOT.write_bytes(shot)
    page.click("#disconnect")
    expect(log).to_contain_text('closed: code 1000 reason "closed from the demo page"')
    expect(page.locator("#state")).to_have_text("disconnected")


def test_demo_page_fits_a_phone(browser: Browser, echo_service: EchoService) -> None:
    """At 390 px wide the page is one column: the log gets the full width and nothing scrolls sideways."""
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(echo_service.url("/", scheme="http"))
        connect_as(page, "dora")
        send(page, "a message long enough to wrap on a phone's screen, which the log must show in full")
        expect(page.locator("#log")).to_contain_text("Message Received from dora")
        box = page.locator("#log").bounding_box()
        assert box is not None and box["width"] >= 330, box
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot = page.screenshot(full_page=True)
        if WRITE_SCREENSHOTS:
            SCREENSHOT.with_name("demo-page-390.png").write_bytes(shot)
    finally:
        page.close()


def test_gateway_button_uses_the_gateway_override(open_demo_page: Callable[..., Page]) -> None:
    """'Use gateway EchoWS' fills the EchoWS URL on the gateway named by ?gateway=."""
    page = open_demo_page(gateway="ws://127.0.0.1:18082")
    page.click("#use-gateway")
    expect(page.locator("#uri")).to_have_value("ws://127.0.0.1:18082/websocket/EchoWS/1.0")


def test_gateway_button_uses_the_port_of_the_echo_servers_config(open_demo_page: Callable[..., Page],
                                                                   echo_service: EchoService) -> None:
    """Without ?gateway=, 'Use gateway' opens the route the echo server's config gives (echo/link.py), not 8082."""
    echo_service.gateway = {"api": "Chat", "scheme": "ws", "port": 19082, "path": "/chat"}
    try:
        page = open_demo_page()
        expect(page.locator("#use-gateway")).to_have_text("Use gateway Chat")
        page.click("#use-gateway")
        expect(page.locator("#uri")).to_have_value("ws://127.0.0.1:19082/chat")
    finally:
        echo_service.gateway = None


def test_refused_upgrade_is_explained(open_demo_page: Callable[..., Page], echo_service: EchoService) -> None:
    """An upgrade refused with an HTTP error shows the 'refused before opening (close code 1006)' message."""
    page = open_demo_page(ws_url=echo_service.url("/not-a-context/"))
    page.fill("#apikey", "secret-key-123")
    page.click("#connect")
    log = page.locator("#log")
    expect(log).to_contain_text("connection refused before opening (close code 1006)")
    # The key is masked in the log line that names the URL.
    expect(log).to_contain_text("x-Gateway-APIKey=***")
    expect(log).not_to_contain_text("secret-key-123")
    expect(page.locator("#state")).to_have_text("disconnected")


def test_unpublished_context_closes_the_page_with_1001(
    open_demo_page: Callable[..., Page], echo_service: EchoService, servers: LoopThread
) -> None:
    """Unpublishing the context the page is on shows the 1001 close and its reason in the log."""
    page = open_demo_page(ws_url=echo_service.url("/websocket/demo/"))
    connect_as(page, "carol")
    room = echo_service.rooms["/websocket/demo/"]

    async def unpublish_and_back() -> None:
        echo_service.unpublish(room)
        echo_service.publish(room)

    servers.run(unpublish_and_back())
    expect(page.locator("#log")).to_contain_text('closed: code 1001 reason "context unpublished"')


@pytest.fixture(scope="module")
def tutorial_gateway(servers: LoopThread, echo_service: EchoService, tmp_path_factory: pytest.TempPathFactory):
    """The examples' gateway on a free port, its APIs pointed at this module's echo server."""
    from support import tutorial_tree

    from gateway.config import check
    from gateway.serving.runtime import Gateway

    root = tutorial_tree(tmp_path_factory.mktemp("tutorial"), echo_service.port)
    config = check([root]).config
    assert config is not None
    gateway = Gateway(config, admin=False, echo=False)
    servers.run(gateway.start())
    yield gateway
    servers.run(gateway.stop())


def test_demo_page_through_the_gateway(open_demo_page: Callable[..., Page], tutorial_gateway: Any) -> None:
    """Through the gateway's EchoWS with the example key, 'hello' comes back transformed; without it, refused."""
    host, port = tutorial_gateway.addresses["default"]
    page = open_demo_page(gateway=f"ws://{host}:{port}")
    page.click("#use-gateway")
    expect(page.locator("#uri")).to_have_value(f"ws://{host}:{port}/websocket/EchoWS/1.0")
    connect_as(page, "bob", api_key="tutorial-key")
    send(page, "hello")
    log = page.locator("#log")
    expect(log).to_contain_text("←Message Received from bob: hello Client Transformation complete")
    expect(log).not_to_contain_text("tutorial-key")
    page.click("#disconnect")
    expect(page.locator("#state")).to_have_text("disconnected")
    page.fill("#apikey", "")
    page.click("#connect")
    expect(log).to_contain_text("connection refused before opening (close code 1006)")
