"""`wsgate run --workers N` with active health checks: one prober per gateway, its verdicts shared by every worker."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

from health_support import backends, health_api
from process_support import admin_json, two_workers
from support import (
    PORT,
    TIMEOUT,
    Scrape,
    eventually,
    http_request,
    running_gateway,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect

from gateway.edge.probe import ProbeResult
from gateway.serving.health import HealthRegistry

CHECKS = """\
  health_check:
    interval: 0.1
    timeout: 1
    healthy_threshold: 1
    unhealthy_threshold: 1
"""
PROBES = 20  # probes the single gateway makes while the two workers' probes are counted


async def upstream_until(admin: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Read the supervisor's /upstreams until API H's one endpoint satisfies ``predicate``; return that entry."""
    async with asyncio.timeout(TIMEOUT):
        while not predicate(entry := (await admin_json(admin, "/upstreams"))["apis"]["H"][0]):
            await asyncio.sleep(0.02)  # the workers take the verdict from the supervisor's message, soon after
    return entry


def transitions(metrics: Scrape, state: str) -> float:
    return sum(s.value for s in metrics.samples
               if s.name == "wsgate_upstream_transitions_total" and s.labels.get("state") == state)


async def test_two_workers_probe_once_per_interval_and_refuse_a_down_endpoint_together(tmp_path):
    """With two workers an endpoint gets about the probes of a single gateway (not twice), goes down once in
    /upstreams and in the metrics when its backend stops, both workers then answer 503, and it comes back up."""
    (tmp_path / "solo").mkdir()
    (tmp_path / "multi").mkdir()
    async with backends("solo", "multi") as (solo, multi):
        single = write_config(tmp_path / "solo", PORT, health_api(solo.url, upstream=CHECKS))
        write_config(tmp_path / "multi", PORT, health_api(multi.url, upstream=CHECKS))
        async with two_workers(tmp_path / "multi" / "config") as (gateway, admin), running_gateway(single):
            await eventually(lambda: len(multi.requests) > 0 and len(solo.requests) > 0)
            solo_start, multi_start = len(solo.requests), len(multi.requests)
            await eventually(lambda: len(solo.requests) >= solo_start + PROBES, 3 * TIMEOUT)
            counted = len(multi.requests) - multi_start
            # Two probers would make about 2 x PROBES; one makes about PROBES (a generous band for a busy machine).
            assert 0 < counted < 1.5 * PROBES, (counted, PROBES)
            upstreams = await admin_json(admin, "/upstreams")
            (entry,) = upstreams["apis"]["H"]
            assert upstreams["prober"] == 0 and entry["url"] == multi.url and entry["healthy"] is True
            assert entry["last_probe"] == "101 Switching Protocols"
            assert sorted(w["index"] for w in entry["workers"]) == [0, 1]

            await multi.kill()
            await gateway.wait_for("endpoint_unhealthy", api="H", endpoint=multi.url)
            down = await upstream_until(admin, lambda e: not any(w["healthy"] for w in e["workers"]))
            assert down["active_ok"] is False and down["healthy"] is False
            url = f"ws://127.0.0.1:{gateway.ports['default']}/h"
            for _ in range(16):  # the kernel spreads them over both workers: each refuses with 503
                response = await http_request(url, upgrade_request("/h"))
                assert response.status == 503, response.body
            metrics = Scrape((await http_request(admin, path="/metrics")).body.decode())
            assert transitions(metrics, "unhealthy") == 1
            assert metrics.value("wsgate_upstream_healthy", api="H") == 0

            await multi.start()  # the same port again
            await gateway.wait_for("endpoint_healthy", api="H", endpoint=multi.url)
            await upstream_until(admin, lambda e: all(w["healthy"] for w in e["workers"]))
            for i in range(8):
                async with connect(url) as ws:
                    await ws.send(f"m{i}")
                    assert await ws.recv() == f"multi:m{i}"
            metrics = Scrape((await http_request(admin, path="/metrics")).body.decode())
            assert transitions(metrics, "unhealthy") == 1 and transitions(metrics, "healthy") == 1
            assert not [r for r in gateway.records if r.get("event") == "endpoint_unhealthy" and r.get("worker") == 1]


async def test_killing_the_prober_worker_hands_probing_to_another(tmp_path):
    """SIGKILL of the probing worker: the supervisor tells the other worker to probe, and probes go on."""
    async with backends("b") as (backend,):
        write_config(tmp_path, PORT, health_api(backend.url, upstream=CHECKS))
        async with two_workers(tmp_path / "config") as (gateway, admin):
            await eventually(lambda: len(backend.requests) > 0)
            assert (await admin_json(admin, "/upstreams"))["prober"] == 0
            victim = (await admin_json(admin, "/readyz"))["workers"][0]
            os.kill(victim["pid"], signal.SIGKILL)
            handed = await gateway.wait_for("prober_handed_over")
            assert handed["worker"] == 1 and handed["previous"] == 0
            await gateway.wait_for("probing_taken_over", worker=1)
            before = len(backend.requests)
            await eventually(lambda: len(backend.requests) >= before + 5)
            await gateway.wait_for("worker_started", worker=0)  # restarted: it takes the verdicts, not the probing
            assert (await admin_json(admin, "/upstreams"))["prober"] == 1


def test_a_worker_that_does_not_probe_takes_the_verdicts_without_counting_them():
    """Plain values: the prober's verdict callback fires on a transition only; a non-probing registry applies a
    verdict (its endpoint goes out) without counting or re-reporting the transition."""
    from gateway.config.models import ActiveHealthCheck

    settings = ActiveHealthCheck(interval=1, timeout=1, healthy_threshold=1, unhealthy_threshold=1)
    prober, other = HealthRegistry(), HealthRegistry()
    other.probing = False
    told: list[tuple[str, str, bool, str]] = []
    prober.on_verdict = lambda *verdict: told.append(verdict)
    health = prober.get("A", "ws://u/")
    prober.probe_result(health, ProbeResult(True, "101"), settings)
    assert told == []
    prober.probe_result(health, ProbeResult(False, "connection refused"), settings)
    prober.probe_result(health, ProbeResult(False, "connection refused"), settings)
    assert told == [("A", "ws://u/", False, "active probe: connection refused")]
    for verdict in told:
        other.apply_verdict(*verdict)
    assert other.get("A", "ws://u/").healthy is False and not other.transitions
    assert prober.transitions == {("A", "ws://u/", "unhealthy"): 1}


def test_a_reload_forgets_the_verdicts_of_endpoints_the_prober_no_longer_has():
    """Plain values: after a reload the supervisor keeps the prober's verdicts only, so a removed endpoint's 'down'
    never reaches a worker started later, and an unchanged verdict keeps its time."""
    from gateway.workers.control import Verdict
    from gateway.workers.supervisor import Supervisor

    supervisor = Supervisor.__new__(Supervisor)
    supervisor.verdicts = {("A", "ws://gone/"): {"active_ok": False, "reason": "refused", "since": 1.0},
                           ("A", "ws://kept/"): {"active_ok": True, "reason": "initial", "since": 2.0}}
    supervisor._replace_verdicts([Verdict("A", "ws://kept/", True, "initial"),
                                  Verdict("B", "ws://new/", True, "initial")])
    assert sorted(supervisor.verdicts) == [("A", "ws://kept/"), ("B", "ws://new/")]
    assert supervisor.verdicts[("A", "ws://kept/")]["since"] == 2.0
