"""Plain YAML reading for tests of files that are not wsgate config (manifests, compose files)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ruamel.yaml import YAML


def load_all(text: str) -> Iterator[Any]:
    """Every document of ``text`` as plain dicts and lists (YAML merge keys resolved)."""
    yaml = YAML(typ="safe", pure=True)
    yield from yaml.load_all(text)
