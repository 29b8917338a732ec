"""Multiprocess metrics read the process id once (issue 26): no system call per counter change, a fork still noticed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import os, sys
from gateway.operations.metrics import Metrics
metrics = Metrics()
for _ in range(2000):
    metrics.upgrade("bench", "api", 101)
pid = os.fork()
if pid == 0:
    metrics.upgrade("bench", "api", 101)  # the child's counts go to files of its own
    os._exit(0)
os.waitpid(pid, 0)
print(os.getpid(), pid)
"""


def _run(tmp_path: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    directory = tmp_path / "multiproc"
    directory.mkdir(exist_ok=True)
    return subprocess.run([*prefix, sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)})


def test_a_forked_child_counts_in_files_of_its_own(tmp_path: Path) -> None:
    """After a fork the child's counter changes land in files named for the child, the parent's in its own."""
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    parent, child = proc.stdout.split()
    names = {path.name for path in (tmp_path / "multiproc").iterdir()}
    assert f"counter_{parent}.db" in names and f"counter_{child}.db" in names


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to count system calls")
def test_counter_changes_make_no_getpid_system_call(tmp_path: Path) -> None:
    """2,000 counter changes in multiprocess mode cost far fewer than 2,000 getpid system calls (was one each)."""
    proc = _run(tmp_path, "strace", "-f", "-c", "-e", "trace=getpid")
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls = 0
    for line in proc.stderr.splitlines():
        fields = line.split()
        if fields and fields[-1] == "getpid":
            calls = int(fields[3])  # % time, seconds, usecs/call, calls[, errors], syscall
    assert calls < 500, proc.stderr[-1000:]
