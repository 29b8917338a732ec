"""`--selector team=payments`: several teams own parts of one tree (decK's select tags).

A selector is `key=value` pairs (comma-separated, or the flag repeated): a resource is selected when its `labels`
hold every pair. The whole tree is still checked (an API's port may belong to another team), but `validate`
reports only the problems inside selected resources, and `plan` diffs only the resources selected on either side.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .diagnostics import Diagnostic
from .source import Document
from .tree import Config

_PAIR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._/-]*)\s*=\s*([^,=]*?)\s*$")


def parse(texts: Sequence[str]) -> dict[str, str]:
    """``["team=payments", "tier=gold,env=prod"]`` -> the pairs; ValueError for a malformed one."""
    out: dict[str, str] = {}
    for text in texts:
        for part in text.split(","):
            match = _PAIR.match(part)
            if match is None:
                raise ValueError(f"selector {part.strip()!r} is not key=value")
            out[match.group(1)] = match.group(2)
    return out


def matches(labels: Mapping[str, str] | None, selector: Mapping[str, str]) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _labels(doc: Document) -> Mapping[str, Any] | None:
    data = doc.data
    labels = data.get("labels") if isinstance(data, dict) else None
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in labels.items()} \
        if isinstance(labels, dict) else None


def diagnostics_of_selected(diagnostics: Sequence[Diagnostic], documents: Sequence[Document],
                            selector: Mapping[str, str]) -> tuple[list[Diagnostic], int]:
    """The diagnostics located inside a selected document, and how many documents are selected."""
    spans: dict[str, list[tuple[int, int]]] = {}
    selected = 0
    for doc in documents:
        if not matches(_labels(doc), selector):
            continue
        selected += 1
        lines = [loc.line for loc in [*doc.values.values(), *doc.keys.values()] if loc.file == doc.file]
        lines.append(doc.start.line)
        spans.setdefault(doc.file, []).append((min(lines), max(lines)))
    kept = [d for d in diagnostics if d.location is not None and any(
        a <= d.location.line <= b for a, b in spans.get(d.location.file, []))]
    return kept, selected


def selected_config(config: Config, selector: Mapping[str, str]) -> Config:
    """``config`` with only the resources whose labels match."""
    def pick(group: Mapping[str, Any]) -> dict[str, Any]:
        return {name: loaded for name, loaded in group.items() if matches(loaded.model.labels, selector)}

    gateway = config.gateway if config.gateway is not None and matches(config.gateway.model.labels, selector) \
        else None
    return dataclasses.replace(config, ports=pick(config.ports), apis=pick(config.apis),
                               applications=pick(config.applications), echo_servers=pick(config.echo_servers),
                               gateway=gateway)
