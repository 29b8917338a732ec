"""The config watcher: which file events and signals lead to a reload request."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from structlog.testing import capture_logs

from gateway.serving.watch import ConfigWatcher

DEADLINE = float(os.environ.get("WSGATE_TEST_TIMEOUT", "10"))


async def _watching(root: Path, action, *, expect: str = "files") -> list[str]:
    """Start a watcher on ``root``, run ``action`` and return the triggers seen until the first one."""
    seen: list[str] = []
    fired = asyncio.Event()

    async def reload(trigger: str) -> None:
        seen.append(trigger)
        fired.set()

    watcher = ConfigWatcher([root], reload, debounce_ms=50)
    await watcher.start()
    try:
        # A change made before the OS watch is in place would be missed.
        await asyncio.wait_for(watcher.ready.wait(), DEADLINE)
        action()
        await asyncio.wait_for(fired.wait(), DEADLINE)
    finally:
        await watcher.stop()
    assert expect in seen
    return seen


async def test_plain_write_triggers_reload(tmp_path: Path) -> None:
    """Writing a YAML file in the tree asks for a reload."""
    (tmp_path / "a.yaml").write_text("kind: Port\n")
    await _watching(tmp_path, lambda: (tmp_path / "a.yaml").write_text("kind: Port\nname: x\n"))


async def test_atomic_rename_save_triggers_reload(tmp_path: Path) -> None:
    """An editor's write-then-rename save is seen."""
    (tmp_path / "a.yaml").write_text("kind: Port\n")

    def save() -> None:
        tmp = tmp_path / ".a.yaml.tmp~"
        tmp.write_text("kind: Port\nname: y\n")
        os.replace(tmp, tmp_path / "a.yaml")

    await _watching(tmp_path, save)


async def test_configmap_symlink_swap_triggers_reload(tmp_path: Path) -> None:
    """A Kubernetes ConfigMap update (the ``..data`` symlink swap) is seen."""
    first = tmp_path / "..2026_01_01_00_00_00.1"
    first.mkdir()
    (first / "api.yaml").write_text("kind: Port\n")
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "api.yaml").symlink_to("..data/api.yaml")

    def swap() -> None:
        second = tmp_path / "..2026_01_01_00_01_00.2"
        second.mkdir()
        (second / "api.yaml").write_text("kind: Port\nname: z\n")
        (tmp_path / "..data_tmp").symlink_to(second.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    await _watching(tmp_path, swap)


async def test_renewed_certificate_or_jwks_triggers_reload(tmp_path: Path) -> None:
    """Files a config points at (a certificate, a JWKS) are part of it: rewriting one asks for a reload."""
    (tmp_path / "gw.pem").write_text("old\n")
    (tmp_path / "keys.json").write_text("{}\n")
    await _watching(tmp_path, lambda: (tmp_path / "gw.pem").write_text("new\n"))
    await _watching(tmp_path, lambda: (tmp_path / "keys.json").write_text('{"keys": []}\n'))


async def test_sighup_triggers_reload(tmp_path: Path) -> None:
    """SIGHUP asks for a reload even when no file changed."""
    await _watching(tmp_path, lambda: os.kill(os.getpid(), signal.SIGHUP), expect="sighup")


async def test_unrelated_file_is_ignored(tmp_path: Path) -> None:
    """A change to a non-YAML file (an editor's swap file, notes) does not ask for a reload."""
    seen: list[str] = []
    fired = asyncio.Event()

    async def reload(trigger: str) -> None:
        seen.append(trigger)
        fired.set()

    watcher = ConfigWatcher([tmp_path], reload, debounce_ms=50)
    await watcher.start()
    try:
        with capture_logs() as events:
            await asyncio.wait_for(watcher.ready.wait(), DEADLINE)
            (tmp_path / ".api.yaml.swp").write_text("x")
            (tmp_path / "notes.txt").write_text("x")
            (tmp_path / "echows.jsonl").write_text("{}\n")  # transaction logs may live in the tree
            # Written last, so the ignored files' events come in its batch or an earlier one: had any passed
            # the filter, a reload would name it (or come first).
            (tmp_path / "b.yaml").write_text("kind: Port\n")  # proves the watcher was alive all along
            await asyncio.wait_for(fired.wait(), DEADLINE)
    finally:
        await watcher.stop()
    assert seen == ["files"]
    assert [e["files"] for e in events if e["event"] == "config_changed"] == [["b.yaml"]]


async def test_ready_is_set_once_watching(tmp_path: Path) -> None:
    """``ready`` is not set before start, is set once watching, and is set at once when no path exists."""

    async def reload(trigger: str) -> None:
        return None

    watcher = ConfigWatcher([tmp_path], reload)
    assert not watcher.ready.is_set()
    await watcher.start()
    try:
        await asyncio.wait_for(watcher.ready.wait(), DEADLINE)
    finally:
        await watcher.stop()
    nothing = ConfigWatcher([tmp_path / "missing"], reload)
    await nothing.start()
    try:
        await asyncio.wait_for(nothing.ready.wait(), DEADLINE)
    finally:
        await nothing.stop()
    assert watcher.ready.is_set() and nothing.ready.is_set()
