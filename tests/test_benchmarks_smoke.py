"""The relay benchmark (issue 7) runs end to end in tiny configurations (no timing assertions)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from redis_support import needs_redis

pytestmark = pytest.mark.slow  # the benchmarks' and the soak's own harnesses: minutes of CPU

REPO = Path(__file__).resolve().parent.parent
TINY = ["--quick", "--seconds", "0.3", "--warmup", "0.1", "--conns", "4", "--wide", "8", "--idle-conns", "20"]
PYTHON_ONLY = ["--loadgen", "python", "--backend", "python", "--no-nginx", "--no-caddy", "--no-install"]
GORILLA = Path("/usr/share/gocode/src/github.com/gorilla/websocket")
HAVE_NGINX = bool(shutil.which("nginx") or Path("/usr/sbin/nginx").exists())
HAVE_GO_AND_NGINX = bool(shutil.which("go") and GORILLA.is_dir() and HAVE_NGINX)
HAVE_CADDY = bool(shutil.which("caddy") or Path("/usr/bin/caddy").exists())


def run_benchmark(script: str, *args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/SCRIPT ARGS`` in ``cwd``, its output captured as text."""
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "bench.json"
    proc = run_benchmark("relay.py", *args, "--json", str(out), cwd=tmp_path, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def _rows(stdout: str) -> list[str]:
    return [line.split("|")[1].strip() for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is still a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _started(report: dict) -> list[int]:
    return [pid for pids in report["pids"].values() for pid in pids]


@pytest.mark.timeout(180)
def test_python_fallback_measures_direct_fast_and_tutorial(tmp_path: Path) -> None:
    """Without Go or nginx the Python generator and backend measure direct, fast path and tutorial chain, then stop."""
    proc, report = _run(tmp_path, *TINY, *PYTHON_ONLY)
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| in front of the echo backend"))
    for column in ("msgs/s 4×16 64 B", "vs direct", "vs nginx", "proxy CPU µs/msg", "p50/p99", "RSS KiB / idle conn"):
        assert column in header
    assert _rows(proc.stdout) == [
        "in front of the echo backend",
        "direct",
        "wsgate fast path",
        "wsgate tutorial chain",
    ]
    assert set(report["rows"]) == {"direct", "fast", "tutorial"}
    for figures in report["rows"].values():
        assert {"rt 64 B", "rt 16 KiB", "main 64 B", "main 16 KiB", "wide 64 B"} <= set(figures)
        assert all(f["rate"] > 0 for f in figures.values())
        assert figures["rt 64 B"]["p99_us"] is not None
    assert report["rss_kib_per_idle_conn"]["fast"] is not None
    assert report["rows"]["tutorial"]["main 64 B"]["proxy_cpu_us"] > 0
    assert "the tutorial chain answers with its transform" in proc.stderr
    assert "Python" in report["machine"]["loadgen"]
    assert not [pid for pid in _started(report) if _alive(pid)]


@pytest.mark.timeout(120)
def test_idle_hold_samples_the_gateway_rss(tmp_path: Path) -> None:
    """``--idle N`` holds N idle connections through the fast path and reports RSS per connection and flatness."""
    proc, report = _run(tmp_path, "--idle", "40", "--idle-duration", "0.5", "--idle-interval", "0.25", *PYTHON_ONLY)
    hold = report["idle_hold"]
    assert hold["connections"] == 40 and hold["lost"] == 0
    assert len(hold["samples"]) >= 2 and hold["kib_per_conn"] is not None
    assert "| 40 for 0.5 s |" in proc.stdout
    assert not [pid for pid in _started(report) if _alive(pid)]


@pytest.mark.timeout(240)
@pytest.mark.skipif(not HAVE_GO_AND_NGINX, reason="needs Debian's golang-go, gorilla/websocket and nginx")
def test_go_generator_and_nginx_rows(tmp_path: Path) -> None:
    """With Go and nginx installed, the compiled generator and backend measure all four rows, upgrades included."""
    proc, report = _run(tmp_path, *TINY, "--upgrade-conns", "2", "--no-install", "--no-caddy")
    rows = _rows(proc.stdout)
    assert rows[1] == "direct" and rows[2].startswith("nginx ")
    assert rows[3:] == ["wsgate fast path", "wsgate tutorial chain"]
    assert "Go" in report["machine"]["loadgen"] and "Go" in report["machine"]["backend"]
    for key in ("nginx", "fast", "tutorial"):
        assert report["rows"][key]["upgrades"]["rate"] > 0
        assert report["rows"][key]["main 64 B"]["proxy_cpu_us"] is not None
        assert report["rss_kib_per_idle_conn"][key] is not None
    assert "Issue 7's targets in this run:" in proc.stdout and "Issue 17's targets in this run:" in proc.stdout
    assert not [pid for pid in _started(report) if _alive(pid)]


@pytest.mark.timeout(180)
@pytest.mark.skipif(not HAVE_GO_AND_NGINX, reason="needs Debian's golang-go, gorilla/websocket and nginx")
@pytest.mark.skipif(not HAVE_CADDY, reason="needs Debian's caddy package (apt-get install caddy), as .ci/run installs")
def test_caddy_row_beside_nginx(tmp_path: Path) -> None:
    """With caddy installed, the table has a Caddy row beside nginx, measured like it (msgs/s, CPU, RSS, upgrades)."""
    proc, report = _run(tmp_path, *TINY, "--upgrade-conns", "2", "--no-install", "--targets", "nginx,caddy")
    rows = _rows(proc.stdout)
    assert rows[1].startswith("nginx ") and rows[2].startswith("Caddy ") and "GOMAXPROCS=1" in rows[2]
    caddy = report["rows"]["caddy"]
    assert caddy["main 64 B"]["rate"] > 0 and caddy["main 64 B"]["proxy_cpu_us"] is not None
    assert caddy["upgrades"]["rate"] > 0
    assert report["rss_kib_per_idle_conn"]["caddy"] is not None
    assert report["machine"]["caddy"].lstrip("v").startswith("2.")
    assert not [pid for pid in _started(report) if _alive(pid)]


def test_validate_scale_runs_end_to_end():
    """The config-at-scale benchmark (issue 17) generates a tree, validates it every way and prints its table."""
    proc = run_benchmark("validate_scale.py", "--apis", "5", "--apps", "5", "--repeat", "1", cwd=REPO, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("  ")[0] for line in proc.stdout.splitlines()[2:]]
    assert rows == ["check() in process", "wsgate validate (new process)", "reload, tree unchanged",
                    "reload, one file changed"]


@pytest.mark.timeout(120)
def test_reconnect_storm_serves_every_client(tmp_path: Path) -> None:
    """``upgrades.py --storm 50``: 50 clients at once on a fresh gateway, every one answered 101 and echoed."""
    out = tmp_path / "storm.json"
    proc = run_benchmark("upgrades.py", "--storm", "50", "--storm-processes", "2",
                         "--backend", "python", "--no-install", "--json", str(out), cwd=tmp_path, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    storm = json.loads(out.read_text())["storm"]
    assert storm["clients"] == 50 and storm["served"] == 50
    assert storm["statuses"] == {"101": 50} and storm["late"] == 0 and storm["ok"] is True
    assert "served: 50 of 50" in proc.stdout


@pytest.mark.timeout(180)
@pytest.mark.skipif(not HAVE_GO_AND_NGINX, reason="needs Debian's golang-go, gorilla/websocket and nginx")
def test_upgrades_benchmark_rows(tmp_path: Path) -> None:
    """``upgrades.py`` measures upgrades/s and CPU per upgrade through nginx, identify + throttle and the tutorial."""
    out = tmp_path / "upgrades.json"
    proc = run_benchmark("upgrades.py", "--seconds", "0.5", "--warmup", "0.1",
                         "--conns", "2", "--no-install", "--json", str(out), cwd=tmp_path, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["target"]: row for row in json.loads(out.read_text())["upgrades"]}
    assert set(rows) == {"nginx", "fast", "tutorial"}
    assert all(row["per_s"] > 0 and row["failed"] == 0 and row["cpu_us"] is not None for row in rows.values())
    assert "| wsgate tutorial chain |" in proc.stdout


@pytest.mark.timeout(120)
def test_routes_benchmark_measures_the_three_rows(tmp_path: Path) -> None:
    """benchmarks/routes.py measures the byte relay, a WebSocket route and an HTTP route, then stops its children."""
    proc = run_benchmark("routes.py", "--conns", "2", "--seconds", "0.3", "--latency", "20", cwd=tmp_path,
                         timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _rows(proc.stdout) == ["row", "WebSocket upstream (byte relay)", "message routed to a WebSocket upstream",
                                  "message routed to an HTTP backend"]


@pytest.mark.timeout(120)
def test_http_clients_benchmark_measures_aiohttp(tmp_path: Path) -> None:
    """benchmarks/http_clients.py measures aiohttp (and httpx when installed) against its own HTTP backend."""
    proc = run_benchmark("http_clients.py", "--requests", "50", "--repeat", "1", "--concurrency", "2",
                         cwd=tmp_path, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "aiohttp" in _rows(proc.stdout)


@pytest.mark.timeout(120)
def test_big_neighbour_measures_every_phase():
    """``message_relay_micro.py --big-neighbour``: the probe's round trips in each phase and big messages relayed
    (and checked: a changed echo fails the run) on every API that has a big sender."""
    proc = run_benchmark("message_relay_micro.py", "--big-neighbour", "--seconds", "0.5", "--warmup", "0.1",
                         "--rounds", "1", "--big-size", "200000", cwd=REPO, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.strip() for line in proc.stdout.splitlines()[1:]]
    assert [row.partition(": probe round trip")[0] for row in rows] == [
        "no big sender", "big sender, message relay without a schema (the relay's own share)",
        "big sender, checked on the loop (offload_above: null)",
        "big sender, checked in the worker process (offload_above: 65536)"]
    assert all("big messages/s" in row for row in rows[1:])


@pytest.mark.slow
@needs_redis
def test_push_fanout_reaches_every_member_in_both_modes(tmp_path: Path) -> None:
    """The push fan-out benchmark runs tiny: every member of both modes gets every publish (no timing)."""
    proc = run_benchmark("push_fanout.py", "--conns", "20", "--publishes", "2", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    for mode in ("push_two_instances", "echo_native_one_process"):
        assert report[mode]["members"] == report[mode]["expected_members"] == 20
        assert report[mode]["publishes"] == 2
