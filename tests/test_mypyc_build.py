"""The optional mypyc build (issue 26): ``WSGATE_MYPYC=1`` compiles the hot relay modules, which then pass the
byte relay's tests; without it nothing is compiled (the pure-Python package needs no C compiler)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HAVE_COMPILER = bool(shutil.which("cc") or shutil.which("gcc"))
HAVE_MYPYC = importlib.util.find_spec("mypyc") is not None
COMPILED = ("wire.frames", "relay.fast", "relay.message", "relay.keepalive")


def _copy_tree(target: Path) -> None:
    """The repository's tracked files (setup.py among them), without build products or the venv."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    shutil.copy2(REPO / "setup.py", target / "setup.py")  # also before it is committed


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not HAVE_COMPILER, reason="needs a C compiler (cc or gcc) for mypyc's C extensions")
@pytest.mark.skipif(not HAVE_MYPYC, reason="needs mypy (which ships mypyc): it comes with the test extra")
def test_compiled_relay_passes_the_byte_relay_tests(tmp_path: Path) -> None:
    """Built with WSGATE_MYPYC=1, the relay modules load as C extensions and the byte relay's tests pass on them."""
    _copy_tree(tmp_path)
    env = {**os.environ, "WSGATE_MYPYC": "1"}
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=800)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    assert list(tmp_path.glob("gateway__mypyc*.so")), "the shared mypyc runtime module was not built"
    check = subprocess.run(
        [sys.executable, "-c", "import importlib; print(' '.join(importlib.import_module('gateway.' + m)"
         f".__file__ for m in {COMPILED!r}))"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert all(path.endswith(".so") and path.startswith(str(tmp_path)) for path in check.stdout.split()), check.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            "tests/test_byte_relay.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]


def test_plain_install_compiles_nothing() -> None:
    """Without WSGATE_MYPYC the build adds no extension modules, so ``pip install -e .`` needs no C compiler."""
    env = {k: v for k, v in os.environ.items() if k != "WSGATE_MYPYC"}
    code = ("import sys, setuptools; captured = {}; setuptools.setup = lambda **kw: captured.update(kw); "
            "sys.argv = ['setup.py']; exec(open('setup.py').read()); print(captured['ext_modules'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
