"""Data masking for stored payloads: JSON field values and pattern matches replaced before a record is written.

Runs in the log writer thread (see log_invocation.py), so its JSON parsing never
costs the relay anything. A JSON payload it cannot mask (nested deeper than the
parser goes) raises ``Unmaskable``: the record is then stored without its
payload, never with the unmasked one, and never dropped (a client must not be
able to choose holes in the audit trail).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from ..config.models import MaskRule


class Unmaskable(Exception):
    """The payload cannot be masked; ``reason`` says why, for the record (never quoting the payload)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Masker:
    """The mask rules of one log-invocation policy, compiled once."""

    __slots__ = ("_fields", "_patterns")

    def __init__(self, rules: Sequence[MaskRule]) -> None:
        self._fields: list[tuple[tuple[str, ...], bool, str]] = []  # (path, anywhere, replacement)
        self._patterns: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = []
        for rule in rules:
            if rule.json_field is not None:
                path = tuple(rule.json_field.split("."))
                self._fields.append((path, len(path) == 1, rule.replacement))
            else:
                assert rule.pattern is not None
                # A function, not a template: backslashes in the replacement are not group references.
                self._patterns.append((re.compile(rule.pattern), _literal(rule.replacement)))

    def __bool__(self) -> bool:
        return bool(self._fields or self._patterns)

    def __call__(self, text: str) -> str:
        """``text`` masked; raises ``Unmaskable`` when its JSON fields cannot be reached."""
        if self._fields:
            try:
                text = self._mask_fields(text)
            except RecursionError:  # parsing, walking or re-encoding a document nested ~1,000 deep
                raise Unmaskable("nesting too deep") from None
        for pattern, replacement in self._patterns:
            text = pattern.sub(replacement, text)
        return text

    def _mask_fields(self, text: str) -> str:
        stripped = text.lstrip()
        if not stripped.startswith(("{", "[")):
            return text  # not a JSON document: only the patterns apply
        try:
            document = json.loads(text)
        except ValueError:
            return text
        changed = False
        for path, anywhere, replacement in self._fields:
            changed |= _replace(document, path, anywhere, replacement)
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")) if changed else text


def _literal(replacement: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: replacement


def _replace(node: Any, path: tuple[str, ...], anywhere: bool, replacement: str) -> bool:
    """Replace the value at ``path`` (or at the key ``path[0]`` at any depth); True when something changed."""
    changed = False
    if isinstance(node, list):
        for item in node:
            changed |= _replace(item, path, anywhere, replacement)
    elif isinstance(node, dict):
        key = path[0]
        for name in node:
            if name == key:
                if len(path) == 1:
                    node[name] = replacement
                    changed = True
                else:
                    changed |= _replace(node[name], path[1:], False, replacement)
            elif anywhere:
                changed |= _replace(node[name], path, True, replacement)
    return changed
