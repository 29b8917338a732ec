"""The config watcher: which file events and signals lead to a reload request."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from gateway.watch import ConfigWatcher

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
        # Give the OS watch a moment to be in place; a change before that would be missed.
        await asyncio.sleep(0.3)
        action()
        await asyncio.wait_for(fired.wait(), DEADLINE)
    finally:
        await watcher.stop()
    assert expect in seen
    return seen


def test_plain_write_triggers_reload(tmp_path: Path) -> None:
    """Writing a YAML file in the tree asks for a reload."""
    (tmp_path / "a.yaml").write_text("kind: Port\n")
    asyncio.run(_watching(tmp_path, lambda: (tmp_path / "a.yaml").write_text("kind: Port\nname: x\n")))


def test_atomic_rename_save_triggers_reload(tmp_path: Path) -> None:
    """An editor's write-then-rename save is seen."""
    (tmp_path / "a.yaml").write_text("kind: Port\n")

    def save() -> None:
        tmp = tmp_path / ".a.yaml.tmp~"
        tmp.write_text("kind: Port\nname: y\n")
        os.replace(tmp, tmp_path / "a.yaml")

    asyncio.run(_watching(tmp_path, save))


def test_configmap_symlink_swap_triggers_reload(tmp_path: Path) -> None:
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

    asyncio.run(_watching(tmp_path, swap))


def test_renewed_certificate_or_jwks_triggers_reload(tmp_path: Path) -> None:
    """Files a config points at (a certificate, a JWKS) are part of it: rewriting one asks for a reload."""
    (tmp_path / "gw.pem").write_text("old\n")
    (tmp_path / "keys.json").write_text("{}\n")
    asyncio.run(_watching(tmp_path, lambda: (tmp_path / "gw.pem").write_text("new\n")))
    asyncio.run(_watching(tmp_path, lambda: (tmp_path / "keys.json").write_text('{"keys": []}\n')))


def test_sighup_triggers_reload(tmp_path: Path) -> None:
    """SIGHUP asks for a reload even when no file changed."""
    asyncio.run(_watching(tmp_path, lambda: os.kill(os.getpid(), signal.SIGHUP), expect="sighup"))


def test_unrelated_file_is_ignored(tmp_path: Path) -> None:
    """A change to a non-YAML file (an editor's swap file, notes) does not ask for a reload."""

    async def scenario() -> tuple[list[str], list[str]]:
        seen: list[str] = []
        fired = asyncio.Event()

        async def reload(trigger: str) -> None:
            seen.append(trigger)
            fired.set()

        watcher = ConfigWatcher([tmp_path], reload, debounce_ms=50)
        await watcher.start()
        try:
            await asyncio.sleep(0.3)
            (tmp_path / ".api.yaml.swp").write_text("x")
            (tmp_path / "notes.txt").write_text("x")
            (tmp_path / "echows.jsonl").write_text("{}\n")  # transaction logs may live in the tree
            # Nothing to wait for when nothing should happen: allow several debounce periods.
            await asyncio.sleep(0.5)
            before = list(seen)
            (tmp_path / "b.yaml").write_text("kind: Port\n")  # proves the watcher was alive all along
            await asyncio.wait_for(fired.wait(), DEADLINE)
        finally:
            await watcher.stop()
        return before, seen

    before, after = asyncio.run(scenario())
    assert before == []
    assert after == ["files"]
