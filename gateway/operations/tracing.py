"""OpenTelemetry tracing of connections (the optional extra ``wsgate[otel]``); off by default, free when off.

One span per upgrade, from the request head to the connection's close,
named ``GET <API path>`` (kind SERVER), with two children: ``policies`` and
``upstream connect``. Attributes: ``wsgate.api``, ``wsgate.port``,
``wsgate.application``, ``http.response.status_code`` and, once the
connection ends, ``websocket.close_code``. A W3C ``traceparent`` (and
``tracestate``) on the client's request is honoured: the span joins that
trace. The upstream handshake request carries the context of the
``upstream connect`` span in place of the client's.

Switched on the OTel way, by the standard environment variables: an
``OTEL_TRACES_EXPORTER`` other than ``none``, or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``);
``OTEL_SDK_DISABLED=true`` wins. The exporter then reads its own settings
(endpoint, headers, protocol, ``OTEL_SERVICE_NAME``...) from the same
environment. When tracing is off this module does not import opentelemetry
and the listener's cost is one ``is None`` test per upgrade.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from .metrics import version

log = structlog.get_logger("wsgate.tracing")

PROPAGATED = ("traceparent", "tracestate")  # the W3C Trace Context headers


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the OTel environment variables ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def from_environment(env: Mapping[str, str]) -> ConnectionTracer | None:
    """A tracer exporting as the environment says, or None (tracing off, or the extra is not installed)."""
    if not wanted(env):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("tracing_unavailable", reason="the OTEL_* environment asks for traces but opentelemetry is "
                    "not installed", hint="pip install 'wsgate[otel]'")
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override this default (Resource.create reads them).
    provider = TracerProvider(resource=Resource.create({"service.name": "wsgate"}))
    for name in names:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
        else:
            log.warning("tracing_exporter_unknown", exporter=name, hint="use otlp, console or none")
    log.info("tracing_on", exporters=names)
    return ConnectionTracer(provider, owned=True)


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    """The OTLP exporter for OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: http/protobuf (default) or grpc."""
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    if protocol.strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class ConnectionTracer:
    """Starts a connection's span; ``provider`` is an OTel ``TracerProvider`` (tests pass one with an
    in-memory exporter)."""

    def __init__(self, provider: Any, *, owned: bool = False) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.owned = owned  # built here from the environment: flushed and shut down with the gateway
        self.tracer = provider.get_tracer("wsgate", version())
        self.propagator = TraceContextTextMapPropagator()

    def start(self, headers: Iterable[tuple[str, str]], *, api: str, port: str, path: str,
              connection: str = "") -> ConnectionSpan:
        """The span of one upgrade, a child of the client's ``traceparent`` when it sent a valid one."""
        from opentelemetry.trace import SpanKind

        carrier = {name.lower(): value for name, value in headers if name.lower() in PROPAGATED}
        parent = self.propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(f"GET {path}", context=parent, kind=SpanKind.SERVER,
                                      attributes={"wsgate.api": api, "wsgate.port": port, "url.path": path,
                                                  "wsgate.connection": connection})
        return ConnectionSpan(self, span)

    def shutdown(self) -> None:
        if self.owned:
            self.provider.shutdown()


class ConnectionSpan:
    """One connection's span and its children; every method is safe to call after the span ended."""

    __slots__ = ("tracer", "span", "child")

    def __init__(self, tracer: ConnectionTracer, span: Any) -> None:
        self.tracer = tracer
        self.span = span
        self.child: Any = None

    def begin(self, name: str) -> None:
        """Start a child span (``policies``, ``upstream connect``); the previous one ends."""
        from opentelemetry import trace

        self.finish_child()
        self.child = self.tracer.tracer.start_span(name, context=trace.set_span_in_context(self.span))

    def finish_child(self, error: str | None = None) -> None:
        child, self.child = self.child, None
        if child is not None:
            if error is not None:
                _error(child, error)
            child.end()

    def upstream_headers(self) -> list[tuple[str, str]]:
        """``traceparent`` (and ``tracestate``) naming the current child span, for the upstream request."""
        from opentelemetry import trace

        carrier: dict[str, str] = {}
        self.tracer.propagator.inject(carrier, context=trace.set_span_in_context(self.child or self.span))
        return list(carrier.items())

    def accepted(self, application: str | None) -> None:
        self.finish_child()
        self.span.set_attribute("http.response.status_code", 101)
        if application:
            self.span.set_attribute("wsgate.application", application)

    def refused(self, status: int, error: str | None, application: str | None) -> None:
        self.finish_child(error if status >= 500 else None)
        if not self.span.is_recording():
            return
        self.span.set_attribute("http.response.status_code", status)
        if application:
            self.span.set_attribute("wsgate.application", application)
        if error:
            self.span.set_attribute("wsgate.error", error)
        if status >= 500:
            _error(self.span, error or str(status))
        self.span.end()

    def closed(self, code: int | None) -> None:
        if not self.span.is_recording():
            return
        if code is not None:
            self.span.set_attribute("websocket.close_code", code)
        self.span.end()


def _error(span: Any, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description))
