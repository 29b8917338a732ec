"""The soak benchmark in its short CI mode: faults injected, nothing lost unexplained, fds back to baseline."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmarks' and the soak's own harnesses: minutes of CPU

REPO = Path(__file__).resolve().parent.parent


def _soak_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("wsgate_soak", REPO / "benchmarks" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _checked(soak_module, echoes: list[str], code: int | None, *, sent: int = 4, killed: bool = False,
             ended_by_us: bool = False) -> dict:  # type: ignore[no-untyped-def]
    """Feed the client-side checker ``sent`` numbered sends, then ``echoes``, then a close; its figures."""
    checker = soak_module.Soak(soak_module.parse_args([]), gateway=None)
    conn = soak_module.Conn(7, "fast", ws=None, window=asyncio.Semaphore(sent))
    for seq in range(sent):
        conn.outstanding.append(seq)
        checker.stats["fast"].sent += 1
    conn.killed = killed
    for echo in echoes:
        checker.receive(conn, echo)
    checker.settle(conn, code, ended_by_us)
    return soak_module._figures(checker.stats["fast"])


def test_checker_tells_explained_from_unexplained_loss() -> None:
    """In-flight messages at a coded close are explained; a gap, a repeat, a reorder or a stray id is not."""
    soak = _soak_module()
    clean = _checked(soak, ["7:0:", "7:1:"], 1001)
    assert (clean["received"], clean["lost_at_close"], clean["lost"], clean["closes"]) == (2, 2, 0, {"1001": 1})
    gap = _checked(soak, ["7:0:", "7:2:"], 1001)
    assert gap["lost"] == 1 and gap["out_of_order"] == 1 and gap["lost_at_close"] == 1
    repeated = _checked(soak, ["7:0:", "7:0:", "7:1:", "7:2:", "7:3:"], None, ended_by_us=False)
    assert repeated["duplicated"] == 1 and repeated["closes"] == {"1006": 1}
    assert _checked(soak, ["8:0:"], 1000, ended_by_us=True)["misrouted"] == 1
    dropped = _checked(soak, ["7:0:"], None)  # no close frame from the gateway: in-flight loss is unexplained
    assert dropped["lost"] == 3 and dropped["lost_at_close"] == 0
    killed = _checked(soak, ["7:0:"], None, killed=True)
    assert killed["abandoned_at_kill"] == 3 and killed["lost"] == 0 and killed["killed"] == 1
    ended = _checked(soak, ["7:0:", "7:1:"], 1000, ended_by_us=True)  # the soak waits for echoes before its close
    assert ended["lost"] == 2 and ended["closes"] == {"1000 (end)": 1}


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict]:
    """One short soak run (about 15 s), shared by the tests of this module."""
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--short", "--seed", "6", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.exists(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


@pytest.mark.timeout(150)
def test_soak_loses_duplicates_and_reorders_nothing(soak: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    """Every message on both relay paths arrived once and in order, or its connection was closed with a code."""
    proc, report = soak
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}"
    assert report["problems"] == []
    for path in ("fast", "policy"):
        stats = report["paths"][path]
        assert stats["sent"] > 0 and stats["received"] > 0
        for figure in ("lost", "duplicated", "out_of_order", "misrouted"):
            assert stats[figure] == 0, f"{path}: {figure} = {stats[figure]}"
        assert stats["sent"] == stats["received"] + stats["lost_at_close"] + stats["abandoned_at_kill"]
        upstream = report["upstream"][path]
        assert upstream["duplicated"] == 0 and upstream["gaps"] == 0
    assert "| all |" in proc.stdout and "result: OK" in proc.stdout


@pytest.mark.timeout(150)
def test_soak_injects_every_fault_kind(soak: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    """Upstream restart, client kill, an unrelated reload and a draining reload each happened and took effect."""
    _, report = soak
    faults = report["faults"]
    assert all(count >= 1 for count in faults["counts"].values()), faults["counts"]
    assert set(faults["counts"]) == {"upstream_restart", "client_kill", "reload_unrelated", "reload_drain"}
    assert faults["clients_killed"] >= 1 and faults["connections_drained"] >= 1
    assert faults["unrelated_reload_closes"] == 0 and faults["reloads_not_applied"] == 0
    closes = report["paths"]["all"]["closes"]
    assert closes.get("1001", 0) >= 1  # the upstream restart and the drain close with 1001
    assert report["paths"]["all"]["killed"] == faults["clients_killed"]
    # Clients reconnected after the restart and the drain: more connections opened than slots.
    assert report["paths"]["all"]["opened"] > report["settings"]["conns"]


@pytest.mark.timeout(150)
def test_soak_gateway_fds_return_to_baseline(soak: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    """After every client left, the gateway holds no connection and exactly the fds it held before."""
    _, report = soak
    gateway = report["gateway"]
    assert gateway["connections_left"] == 0
    assert gateway["fds"]["peak"] > gateway["fds"]["start"]  # the sampler saw the connections
    assert gateway["fds"]["end"] <= gateway["fds"]["start"], gateway["fds_opened"]
    assert gateway["exit_code"] == 0
