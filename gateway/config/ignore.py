"""`.wsgateignore`: files under a config directory that are not wsgate resources (Kubernetes manifests, a compose
file, Prometheus rules, values files), so `validate` of a folder that also holds them reports none of them.

The file sits in a directory given to validate/plan/run and holds one pattern a line, read like a small
`.gitignore`: `#` starts a comment; `name.yaml` or `*.json` matches a file of that name anywhere below; a pattern
with a `/` inside (`kubernetes/*.yaml`) matches the path from that directory; a trailing `/` (`prometheus/`)
matches everything under that directory (anywhere below, or from the directory when the pattern has another `/`).
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable
from pathlib import Path

IGNORE_FILE = ".wsgateignore"
MAX_BYTES = 64 * 1024


def matcher(root: Path) -> Callable[[Path], bool] | None:
    """Whether a file under ``root`` is ignored, per ``root/.wsgateignore``; None when there is no such file."""
    path = root / IGNORE_FILE
    try:
        # Only a regular file of reasonable size (a FIFO or /dev/zero behind the name must not hang the check).
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as file:
            text = file.read(MAX_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    patterns = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not patterns:
        return None

    def ignored(path: Path) -> bool:
        try:
            relative = path.relative_to(root).as_posix()
        except ValueError:
            return False
        return any(_matches(relative, p) for p in patterns)

    return ignored


def _matches(relative: str, pattern: str) -> bool:
    directory = pattern.endswith("/")
    pattern = pattern.strip("/")
    anchored = "/" in pattern
    parts = relative.split("/")
    if directory:
        folders = parts[:-1]
        if anchored:
            depth = pattern.count("/") + 1
            return len(folders) >= depth and fnmatch.fnmatchcase("/".join(folders[:depth]), pattern)
        return any(fnmatch.fnmatchcase(f, pattern) for f in folders)
    if anchored:
        return fnmatch.fnmatchcase(relative, pattern)
    return fnmatch.fnmatchcase(parts[-1], pattern) or any(fnmatch.fnmatchcase(f, pattern) for f in parts[:-1])
