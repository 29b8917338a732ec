"""The tutorial, to the letter: its service-invocation URLs, the demo page where it opens it, and the "Use
gateway" button pointing where the config the echo server was started with says."""

from __future__ import annotations

import json
from pathlib import Path

from test_echo import echo_model, http_get, refused_status, running

from echo.link import gateway_link
from echo.server import EchoService
from gateway.build.pipeline import build

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


async def test_invoke_urls_answer_like_the_short_ones() -> None:
    """`/invoke/websocketDemo:stopDemoAPI` and `...:startDemoAPI` act and answer as `/stopDemoAPI` and
    `/startDemoAPI` do."""
    model = echo_model({"path": "/api/demo/"}, {"path": "/websocket/demo/"})
    async with running(model) as service:
        status, headers, body = await http_get(service, "/invoke/websocketDemo:stopDemoAPI?relativeURI=/api/demo/")
        assert (status, headers["content-type"]) == (200, "application/json")
        assert json.loads(body) == {"status": "stopped", "contexts": ["/api/demo/"], "published": ["/websocket/demo/"]}
        assert await refused_status(service.url("/api/demo/")) == 404
        short = await http_get(service, "/startDemoAPI?relativeURI=/api/demo/")
        status, _, body = await http_get(service, "/invoke/websocketDemo:startDemoAPI?relativeURI=/api/demo/")
        assert (status, json.loads(body)) == (short[0], json.loads(short[2]))
        _, _, body = await http_get(service, "/invoke/websocketDemo:startDemoAPI")
        assert json.loads(body)["published"] == ["/api/demo/", "/websocket/demo/"]


async def test_demo_page_where_the_tutorial_opens_it() -> None:
    """`/websocketDemoPackage/demo.html` serves the demo page, and its relative CSS and JS load beside it."""
    async with running(echo_model()) as service:
        status, headers, body = await http_get(service, "/websocketDemoPackage/demo.html")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'"path": "/api/demo/"' in body and b'href="demo.css"' in body
        for name, kind in (("demo.js", "text/javascript"), ("demo.css", "text/css")):
            status, headers, _ = await http_get(service, f"/websocketDemoPackage/{name}")
            assert (status, headers["content-type"]) == (200, kind)


async def test_use_gateway_follows_the_config_the_echo_server_was_started_with() -> None:
    """The examples with the dev values: the page's config block names EchoWS on port 18082, not 8082."""
    result = build([EXAMPLES], env={}, values=[EXAMPLES / "values" / "dev.yaml"])
    assert result.config is not None
    echo = result.config.echo_servers["demo-backend"].model
    assert gateway_link(result.config, echo) == {"api": "EchoWS", "scheme": "ws", "port": 18082,
                                                 "path": "/websocket/EchoWS/1.0"}
    service = EchoService(echo, port=0)  # a free port: the link is what matters, not where this copy listens
    service.gateway = gateway_link(result.config, echo)
    await service.start()
    try:
        _, _, body = await http_get(service, "/")
        config = json.loads(body.split(b'<script id="echo-config" type="application/json">')[1].split(b"</script>")[0])
        assert config["gateway"] == {"api": "EchoWS", "scheme": "ws", "port": 18082, "path": "/websocket/EchoWS/1.0"}
    finally:
        await service.stop()


def test_no_gateway_link_when_no_api_fronts_the_echo_server() -> None:
    """An echo server no API points at gets no link (the page falls back to ?gateway= or the tutorial's port)."""
    result = build([EXAMPLES / "gateway" / "echo.yaml"], env={})
    assert result.config is not None
    assert gateway_link(result.config, result.config.echo_servers["demo-backend"].model) is None
