"""Prometheus metrics for the admin listener's ``/metrics``: counters kept by the runtime, gauges read live.

Counting is a dict increment at upgrade and close time, never per message:
message and byte totals are the closed connections' counters plus the live
ones', added up when scraped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connections import ConnectionRegistry
    from .health import HealthRegistry
    from .policies.base import ConnectionContext
    from .policies.state import PolicyState


class Metrics:
    """The runtime's counters; one per gateway process, kept across reloads."""

    __slots__ = ("upgrades", "closes", "messages", "payload_bytes", "reloads", "accept_errors")

    def __init__(self) -> None:
        self.upgrades: Counter[tuple[str, str, str]] = Counter()  # (port, api, status)
        self.closes: Counter[tuple[str, str]] = Counter()  # (api, code)
        self.messages: Counter[tuple[str, str]] = Counter()  # (api, direction) of closed connections
        self.payload_bytes: Counter[tuple[str, str]] = Counter()
        self.reloads: Counter[str] = Counter()  # outcome: applied, unchanged, failed
        self.accept_errors: Counter[str] = Counter()  # listener: accepts that failed (out of descriptors)

    def accept_error(self, listener: str) -> None:
        self.accept_errors[listener] += 1

    def upgrade(self, port: str, api: str, status: int) -> None:
        self.upgrades[(port, api, str(status))] += 1

    def closed(self, conn: ConnectionContext, code: int | None) -> None:
        self.closes[(conn.api, "none" if code is None else str(code))] += 1
        _add(self.messages, self.payload_bytes, conn)

    def render(self, registry: ConnectionRegistry, generation: int, state: PolicyState | None = None,
               health: HealthRegistry | None = None) -> str:
        """The Prometheus text exposition: these counters plus the live connections of ``registry``, the
        message policies' counts and the shared state backend's health kept in ``state``, and the endpoint
        health of ``health``."""
        limited = state.rate_limits.exceeded if state is not None else Counter()
        violations = state.violations if state is not None else Counter()
        state_health: dict[str, Any] = (state.shared.health() if state is not None
                                        else {"backend": "memory", "healthy": True})
        messages, payload_bytes = Counter(self.messages), Counter(self.payload_bytes)
        active: Counter[tuple[str, str, str]] = Counter()
        for record in registry.live:
            conn = record.conn
            if record.relay is None or conn is None:
                continue
            active[(record.port_name, conn.api, conn.application.name if conn.application else "")] += 1
            _add(messages, payload_bytes, conn)
        return "".join([
            _family("wsgate_connections_active", "gauge", "Relayed connections open now.",
                    (({"port": p, "api": a, "application": app}, n) for (p, a, app), n in sorted(active.items()))),
            _family("wsgate_upgrades_total", "counter", "Upgrade requests answered, by HTTP status.",
                    (({"port": p, "api": a, "status": s}, n) for (p, a, s), n in sorted(self.upgrades.items()))),
            _family("wsgate_connections_closed_total", "counter", "Relayed connections ended, by close code.",
                    (({"api": a, "code": c}, n) for (a, c), n in sorted(self.closes.items()))),
            _family("wsgate_messages_total", "counter", "Messages relayed (client: client to server).",
                    (({"api": a, "direction": d}, n) for (a, d), n in sorted(messages.items()))),
            _family("wsgate_message_bytes_total", "counter", "Payload bytes relayed.",
                    (({"api": a, "direction": d}, n) for (a, d), n in sorted(payload_bytes.items()))),
            _family("wsgate_rate_limited_total", "counter",
                    "Messages past a rate limit that were dropped or closed the connection (delays not counted).",
                    (({"api": a, "direction": d, "action": x}, n) for (a, d, x), n in sorted(limited.items()))),
            _family("wsgate_message_violations_total", "counter",
                    "Messages matching none of their API's definitions, by kind and what was done (log, drop, close).",
                    (({"api": a, "direction": d, "kind": k, "action": x}, n)
                     for (a, d, k, x), n in sorted(violations.items()))),
            _family("wsgate_reloads_total", "counter", "Config reloads, by outcome.",
                    (({"outcome": o}, n) for o, n in sorted(self.reloads.items()))),
            _family("wsgate_accept_errors_total", "counter",
                    "Accepts that failed, mostly for lack of file descriptors (the listener pauses).",
                    (({"listener": name}, n) for name, n in sorted(self.accept_errors.items()))),
            _family("wsgate_config_generation", "gauge", "Generation of the config serving now.",
                    [({}, generation)]),
            _family("wsgate_state_backend_up", "gauge", "1 while the shared state backend answers (memory always).",
                    [({"backend": state_health["backend"]}, int(state_health["healthy"]))]),
            *(_upstream_families(health) if health is not None else ()),
        ])


def _upstream_families(health: HealthRegistry) -> list[str]:
    """Endpoint health (1 healthy, 0 not), handshakes in flight, and health transitions."""
    states = sorted(health.endpoints.items())
    return [
        _family("wsgate_upstream_healthy", "gauge", "Whether an upstream endpoint takes new connections.",
                (({"api": a, "endpoint": u}, int(h.healthy)) for (a, u), h in states)),
        _family("wsgate_upstream_pending", "gauge", "Upstream handshakes in flight per endpoint.",
                (({"api": a, "endpoint": u}, h.pending) for (a, u), h in states)),
        _family("wsgate_upstream_transitions_total", "counter", "Endpoint health changes, by the new state.",
                (({"api": a, "endpoint": u, "state": st}, n) for (a, u, st), n in sorted(health.transitions.items()))),
    ]


def _add(messages: Counter[tuple[str, str]], payload_bytes: Counter[tuple[str, str]], conn: ConnectionContext) -> None:
    counters = conn.counters
    messages[(conn.api, "client")] += counters.messages_in
    messages[(conn.api, "server")] += counters.messages_out
    payload_bytes[(conn.api, "client")] += counters.bytes_in
    payload_bytes[(conn.api, "server")] += counters.bytes_out


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], int]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{rendered}}} {value}" if rendered else f"{name} {value}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
