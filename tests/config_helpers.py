"""Helpers for the config tests: write YAML into a directory, read diagnostics back as plain tuples."""

from __future__ import annotations

import textwrap
from pathlib import Path

from gateway.config import CheckResult, check

PORT = """\
kind: Port
name: default
port: 8082
"""

API = """\
kind: API
name: EchoWS
path: /websocket/EchoWS/1.0
ports: [default]
upstream:
  endpoints:
    - url: ws://backend.internal:8765/api/demo/
policies:
  - type: identify
"""

APP = """\
kind: Application
name: demo-app
identifiers:
  api_keys:
    - sha256:434f4cad53d8c1fcbb91e478d081844b190f84c8a9ac3975e671aa6c9e7cc93c
apis: [EchoWS]
"""


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def run_check(root: Path, env: dict[str, str] | None = None) -> CheckResult:
    return check([root], env={} if env is None else env)


def found(result: CheckResult) -> list[tuple[str, str, int, int]]:
    """(code, file name, line, col) of every diagnostic."""
    return [
        (d.code, Path(d.location.file).name if d.location else "", d.location.line if d.location else 0,
         d.location.col if d.location else 0)
        for d in result.diagnostics
    ]


def codes(result: CheckResult) -> list[str]:
    return [d.code for d in result.diagnostics]


def base(root: Path, *, port: str = PORT, api: str = API, app: str = APP) -> None:
    """A small valid config: one port, one API, one application."""
    write(root, "ports.yaml", port)
    write(root, "apis/echo.yaml", api)
    write(root, "apps/demo.yaml", app)
