"""Optional compiled build of the hot modules with mypyc (issue 26); the pure-Python package is the default.

    pip install -e .                                          # pure Python: no C compiler needed
    pip install mypy setuptools                               # the compiler's build requirements, then
    WSGATE_MYPYC=1 pip install --no-build-isolation .         # the relay compiled (needs a C compiler)

Every project setting lives in pyproject.toml; this file only adds the extension modules when
``WSGATE_MYPYC=1`` asks for them. mypyc compiles each listed module to a C extension that replaces the
``.py`` at import (the ``.py`` files stay installed, as the fallback source and for tracebacks), plus one
shared runtime module, ``gateway__mypyc``, installed next to the ``gateway`` package. Only modules whose
compiled form measured faster are listed (docs/performance.md, "Compiled hot path").
"""

from __future__ import annotations

import os

from setuptools import setup

# The modules compiled, each measured before/after (docs/performance.md); keep this list short and measured.
COMPILED = [
    "gateway/wire/frames.py",
    "gateway/relay/fast.py",
    "gateway/relay/message.py",
    "gateway/relay/keepalive.py",
]


def _extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("WSGATE_MYPYC", "") not in ("1", "true", "yes"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        raise SystemExit(
            "WSGATE_MYPYC=1 needs mypy (which ships mypyc) in the build environment: "
            "`pip install mypy setuptools` and then `WSGATE_MYPYC=1 pip install --no-build-isolation .`"
        ) from exc
    # group_name: the shared runtime is the module ``gateway__mypyc``, installed with the package.
    return mypycify(COMPILED, opt_level=os.environ.get("WSGATE_MYPYC_OPT", "3"), group_name="gateway")


setup(ext_modules=_extensions())
