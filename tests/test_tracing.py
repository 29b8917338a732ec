"""OpenTelemetry tracing: a span per upgrade with policy and upstream-connect children, W3C traceparent both ways,
switched on by the OTEL_* environment, and not even imported when off."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing tests need the otel extra (pip install 'wsgate[otel]')")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402
from support import (  # noqa: E402
    PORT,
    api_yaml,
    app_yaml,
    eventually,
    gw_url,
    http_request,
    recording_backend,
    run,
    running_gateway,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect  # noqa: E402

from gateway.operations.tracing import wanted  # noqa: E402

KEY = "tracing-test-key"
APP = app_yaml(KEY)
IDENTIFY = "policies:\n  - type: identify\n"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"


def in_memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_an_upgrade_is_one_span_with_policy_and_upstream_children_and_propagates_traceparent(tmp_path):
    """The client's traceparent is honoured, the upstream gets the connect span's, and the span holds the outcome."""

    async def scenario():
        provider, exporter = in_memory()
        async with recording_backend() as backend:
            config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url + "/up", extra=IDENTIFY), APP)
            async with running_gateway(config, tracer_provider=provider) as gw:
                headers = {"x-Gateway-APIKey": KEY, "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"}
                async with connect(gw_url(gw, "/echo"), additional_headers=headers) as ws:
                    await ws.send("hi")
                    assert await ws.recv() == "hi"
                await eventually(lambda: len(exporter.get_finished_spans()) == 3)
        spans = {span.name: span for span in exporter.get_finished_spans()}
        root, policies, upstream = spans["GET /echo"], spans["policies"], spans["upstream connect"]
        assert root.kind == SpanKind.SERVER
        assert format(root.context.trace_id, "032x") == CLIENT_TRACE
        assert format(root.parent.span_id, "016x") == CLIENT_PARENT
        assert policies.parent.span_id == root.context.span_id
        assert upstream.parent.span_id == root.context.span_id
        assert root.attributes["wsgate.api"] == "Echo"
        assert root.attributes["wsgate.application"] == "acme"
        assert root.attributes["http.response.status_code"] == 101
        assert root.attributes["websocket.close_code"] == 1000
        sent = backend.headers.get_all("traceparent")
        assert sent == [f"00-{CLIENT_TRACE}-{format(upstream.context.span_id, '016x')}-01"]

    run(scenario())


def test_a_refused_upgrade_ends_its_span_with_the_status_and_an_error_for_a_502(tmp_path):
    """A 401 from a policy and a 502 from a dead upstream each end their span; only the 502 is an error."""

    async def scenario():
        provider, exporter = in_memory()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            dead = sock.getsockname()[1]
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", f"ws://127.0.0.1:{dead}/", extra=IDENTIFY),
                              APP)
        async with running_gateway(config, tracer_provider=provider) as gw:
            assert (await http_request(gw_url(gw, "/echo"), upgrade_request("/echo"))).status == 401
            request = upgrade_request("/echo", extra=f"x-Gateway-APIKey: {KEY}\r\n")
            assert (await http_request(gw_url(gw, "/echo"), request)).status == 502
        roots = [s for s in exporter.get_finished_spans() if s.name == "GET /echo"]
        assert [s.attributes["http.response.status_code"] for s in roots] == [401, 502]
        assert [s.status.status_code for s in roots] == [StatusCode.UNSET, StatusCode.ERROR]
        assert roots[0].attributes["wsgate.error"] == "unauthorized"
        connect_spans = [s for s in exporter.get_finished_spans() if s.name == "upstream connect"]
        assert len(connect_spans) == 1 and connect_spans[0].status.status_code == StatusCode.ERROR
        assert "websocket.close_code" not in roots[1].attributes

    run(scenario())


def test_without_tracing_the_client_traceparent_passes_through_untouched(tmp_path):
    """Tracing off: the gateway neither starts spans nor replaces a client's traceparent."""

    async def scenario():
        async with recording_backend() as backend:
            config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url + "/up"))
            async with running_gateway(config) as gw:
                assert gw.tracer is None
                value = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
                async with connect(gw_url(gw, "/echo"), additional_headers={"traceparent": value}) as ws:
                    await ws.send("x")
                    await ws.recv()
                assert backend.headers.get_all("traceparent") == [value]

    run(scenario())


def test_the_otel_environment_switches_tracing_on():
    """Tracing is on for an exporter or OTLP endpoint in the environment, off by default, for none, or when disabled."""
    assert not wanted({})
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})


OFF = textwrap.dedent("""
    import asyncio, sys
    from gateway.config import check
    from gateway.common.log import configure_logging
    from gateway.operations.admin import admin_server
    from gateway.serving.runtime import Gateway

    async def main():
        configure_logging("json")
        gateway = Gateway(check([sys.argv[1]]).config, admin=("127.0.0.1", 0), echo=False, admin_server=admin_server)
        await gateway.start()
        on = gateway.tracer is not None
        await gateway.stop()
        print(on, any(name.split(".")[0] == "opentelemetry" for name in sys.modules))

    asyncio.run(main())
""")


@pytest.mark.parametrize(("variables", "expected"), [({}, "False False"),
                                                     ({"OTEL_TRACES_EXPORTER": "console"}, "True True")])
def test_tracing_off_does_not_import_opentelemetry(tmp_path, variables, expected):
    """A gateway started without OTEL_* variables never imports opentelemetry; with them it traces."""
    write_config(tmp_path, PORT, api_yaml("Echo", "/echo", "ws://127.0.0.1:9/"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(variables, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    result = subprocess.run([sys.executable, "-c", OFF, str(tmp_path / "config")], env=env, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.split("\n")[0] == expected
