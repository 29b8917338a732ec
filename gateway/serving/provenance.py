"""Where the serving config came from: the git commit of the checkout holding the tree, read from `.git` files.

A fleet's replicas report it (``/readyz``, ``/reload``, ``wsgate_config_info``) so a rollout can see which commit
each one serves. Read without running git (not installed in the image): ``HEAD``, then the ref it names under
``refs/`` or in ``packed-refs``; a worktree's ``.git`` file points at its git directory. None when the tree is
not in a checkout or the files cannot be read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")


def tree_commit(paths: Sequence[Path]) -> str | None:
    """The commit checked out where the first of ``paths`` lives (a directory or a file), or None."""
    if not paths:
        return None
    start = Path(paths[0]).resolve()
    for folder in [start, *start.parents] if start.is_dir() else list(start.parents):
        git = folder / ".git"
        if git.exists():
            try:
                return _head(_git_dir(git))
            except (OSError, ValueError):
                return None
    return None


def _git_dir(git: Path) -> Path:
    if git.is_dir():
        return git
    text = git.read_text(encoding="utf-8").strip()  # a worktree or submodule: "gitdir: PATH"
    if not text.startswith("gitdir:"):
        raise ValueError("not a git file")
    target = Path(text.split(":", 1)[1].strip())
    return target if target.is_absolute() else (git.parent / target).resolve()


def _head(git_dir: Path) -> str | None:
    head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
    if _SHA.match(head):
        return head  # detached
    if not head.startswith("ref:"):
        return None
    ref = head.split(":", 1)[1].strip()
    # A worktree keeps its HEAD in its own directory but its refs in the common one.
    common = git_dir
    if (git_dir / "commondir").is_file():
        common = (git_dir / (git_dir / "commondir").read_text(encoding="utf-8").strip()).resolve()
    for base in (git_dir, common):
        loose = base / ref
        if loose.is_file():
            value = loose.read_text(encoding="utf-8").strip()
            return value if _SHA.match(value) else None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and _SHA.match(parts[0]):
                return parts[0]
    return None
