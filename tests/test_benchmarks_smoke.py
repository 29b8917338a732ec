"""The relay benchmark runs end to end in a tiny configuration (no timing assertions)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = ["--quick", "--seconds", "0.3", "--warmup", "0.1", "--conns", "4", "--idle", "20"]


def _has_policies() -> bool:
    try:
        return hasattr(importlib.import_module("gateway.policies"), "build_chain")
    except ImportError:
        return False


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "relay.py"), *SMOKE, "--json", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
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


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _has_policies(), reason="gateway.policies.build_chain is not there yet")
def test_relay_benchmark_prints_the_table(tmp_path: Path) -> None:
    """A smoke run measures direct, the fast path and the tutorial chain and prints all six rows."""
    proc, report = _run(tmp_path)
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| in front of the echo backend"))
    for column in ("msgs/s", "vs direct", "gateway CPU µs/msg", "p50/p99", "RSS KiB / idle conn"):
        assert column in header
    rows = _rows(proc.stdout)
    for target in ("direct", "wsgate fast path", "wsgate tutorial chain"):
        assert rows.count(target) == 2, f"{target} should have a 64 B and a 16 KiB row: {proc.stdout}"
    assert set(report["cells"]) == {"direct", "wsgate fast path", "wsgate tutorial chain"}
    for cells in report["cells"].values():
        for cell in cells.values():
            assert cell["many_rate"] > 0 and cell["one_conn_rate"] > 0 and cell["p99_us"] is not None
    assert "the tutorial chain answers with its transform" in proc.stderr
    assert not [pid for pids in report["pids"].values() for pid in pids if _alive(pid)]


@pytest.mark.timeout(120)
def test_relay_benchmark_fast_path_and_cleanup(tmp_path: Path) -> None:
    """Direct and fast-path rows are measured (RSS included) and every process the run started is gone after."""
    proc, report = _run(tmp_path, "--targets", "direct,fast")
    assert _rows(proc.stdout) == ["in front of the echo backend"] + ["direct"] * 2 + ["wsgate fast path"] * 2
    assert "| direct | 64 B |" in proc.stdout
    assert report["rss_kib_per_idle_conn"]["wsgate fast path"] is not None
    assert "measuring direct 64B x1 conn x1 in flight" in proc.stderr
    started = [pid for pids in report["pids"].values() for pid in pids]
    assert len(started) == 4  # the echo backend, two load generators, the gateway
    assert not [pid for pid in started if _alive(pid)]
