"""Credentials never leave `check()` in a diagnostic, whatever shape they were written in.

The rule is structural: a *credential-bearing field* is any mapping key that
is, or looks like, one that holds secrets (``api_keys``, ``password``,
``secret``, ``basic``, ``headers``, a misspelling of one of them, or a name
containing ``pass``, ``token``, ``secret``, ``auth``, ``apikey``...). Everything
written under such a field, in any shape (a string where a list belongs, a
number, a nested list, a mapping's keys, an extra field beside ``env:``), is
secret, except the two things that name rather than hold a credential: an
``env:`` variable name and a ``username``. The userinfo of a URL
(``ws://user:pass@host``) is secret anywhere.

:func:`scrub` then applies two cuts to every diagnostic of the run, so no
renderer (text, JSON, GitHub), reload log or admin answer can show a secret:

- by location: a quoted source line on which a secret node stands is cut at
  the first such node's column;
- by value: every secret value of the diagnostic's file is replaced in the
  summary, detail, hint, notes and source line, as a whole token (a short
  value does not eat the letters of other words).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..common.redaction import REDACTED
from .diagnostics import Diagnostic, Related
from .source import Document

CREDENTIAL_FIELDS = ("api_keys", "password", "secret", "basic", "headers")
_CREDENTIAL_FRAGMENTS = ("pass", "secret", "token", "apikey", "api_key", "credential", "auth")
# Names holding where a credential is, not the credential: file paths, the key header switch, a TLS key path.
_PUBLIC_NAMES = frozenset({"key", "api_key_header"})
_PUBLIC_LEAVES = frozenset({"env", "username"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A mapping key that reads like a field name (`value`, `env_var`) is a misplaced field, not a secret: its value
# is cut, the name stays readable. Any other key under a credential field is cut as a value.
_FIELD_LIKE = re.compile(r"^[a-z][a-z_]{0,23}$")
_USERINFO = re.compile(r"//([^/?#@\s]*)@")


def is_credential_field(name: Any) -> bool:
    """Whether a mapping key holds (or, misspelled, was meant to hold) a credential."""
    return isinstance(name, str) and _credential_name(name)


@functools.lru_cache(maxsize=4096)  # a config repeats a few dozen field names; difflib runs once per name
def _credential_name(name: str) -> bool:
    lower = name.lower()
    if lower in _PUBLIC_NAMES or lower.endswith("file"):
        return False
    if lower in CREDENTIAL_FIELDS or any(fragment in lower for fragment in _CREDENTIAL_FRAGMENTS):
        return True
    return bool(difflib.get_close_matches(lower, CREDENTIAL_FIELDS, n=1, cutoff=0.8))


@dataclasses.dataclass
class _Secrets:
    values: set[str] = dataclasses.field(default_factory=set)
    cuts: dict[int, int] = dataclasses.field(default_factory=dict)  # line -> first column of a secret on it

    def cut(self, line: int, col: int) -> None:
        self.cuts[line] = min(col, self.cuts.get(line, col))

    def add(self, value: Any) -> None:
        if value is None or isinstance(value, bool):
            return
        for text in {str(value), repr(value)}:
            for piece in text.splitlines() or [text]:
                if piece.strip():
                    self.values.add(piece.strip())


def _walk(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, index))


def _collect(doc: Document, secrets: _Secrets) -> None:
    """Every secret node of ``doc``: its value (for the text cut) and its position (for the line cut)."""
    for path, node in _walk(doc.data, ()):
        if path and isinstance(path[-1], str) and is_credential_field(path[-1]):
            _collect_subtree(doc, path, node, secrets)
        elif isinstance(node, str) and "@" in node:
            match = _USERINFO.search(node)
            if match and match.group(1):
                secrets.add(match.group(1))
                loc = doc.values.get(path)
                if loc is not None:
                    secrets.cut(loc.line, loc.col + match.start(1))


def _collect_subtree(doc: Document, root: tuple[Any, ...], subtree: Any, secrets: _Secrets) -> None:
    for path, node in _walk(subtree, root):
        if isinstance(node, Mapping):
            for key in node:
                if key in _PUBLIC_LEAVES:
                    continue
                if not (isinstance(key, str) and _FIELD_LIKE.match(key)):
                    secrets.add(key)  # a key in a mapping where a key list belongs: `api_keys: {SECRET: 1}`
                key_loc = doc.keys.get((*path, key))
                if key_loc is not None:
                    secrets.cut(key_loc.line, key_loc.col)
            continue
        if isinstance(node, list):
            loc = doc.values.get(path)
            if loc is not None and node:
                secrets.cut(loc.line, loc.col)  # a flow list on the field's own line: cut at its bracket
            continue
        leaf = path[-1] if len(path) > len(root) else None
        if leaf in _PUBLIC_LEAVES and isinstance(node, str) and (leaf != "env" or _ENV_NAME.match(node)):
            continue
        secrets.add(node)
        loc = doc.values.get(path)
        if loc is not None:
            secrets.cut(loc.line, loc.col)


def _token_pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(set(values), key=len, reverse=True)
    if not ordered:
        return None
    alternatives = "|".join(re.escape(v) for v in ordered)
    # Whole tokens: a value does not match inside a longer word (a key `ab` leaves "table" alone).
    return re.compile(rf"(?<![A-Za-z0-9_])(?:{alternatives})(?![A-Za-z0-9_])")


def _cut_truncated(text: str, values: Sequence[str]) -> str:
    """Cut what a shortened quote (``'abc...``) kept of a secret: the longest secret prefix before each `...`."""
    if "..." not in text:
        return text
    out, start = [], 0
    for match in re.finditer(r"\.\.\.", text):
        end = match.start()
        longest = 0
        for value in values:
            for k in range(min(len(value), end - start), max(longest, 2), -1):  # 3 characters at least
                if text.endswith(value[:k], start, end):
                    longest = k
                    break
        out.append(text[start:end - longest] + (REDACTED if longest else ""))
        start = end
    out.append(text[start:])
    return "".join(out)


def scrub(diagnostics: Sequence[Diagnostic], documents: Sequence[Document]) -> list[Diagnostic]:
    """``diagnostics`` with every secret of their files cut out (see the module docstring)."""
    # Only the files a diagnostic points at (or notes) are walked: a reload of a large tree with a few
    # diagnostics does not pay for every document.
    files = {d.location.file for d in diagnostics if d.location is not None}
    files |= {r.location.file for d in diagnostics for r in d.related}
    per_file: dict[str, _Secrets] = {}
    for doc in documents:
        if doc.file in files:
            _collect(doc, per_file.setdefault(doc.file, _Secrets()))
    everywhere = _token_pattern(v for s in per_file.values() for v in s.values)
    if everywhere is None:
        return list(diagnostics)
    values = sorted({v for s in per_file.values() for v in s.values})

    def clean(text: str) -> str:
        return _cut_truncated(everywhere.sub(REDACTED, text), values)

    out = []
    for d in diagnostics:
        secrets = per_file.get(d.location.file) if d.location is not None else None
        source_line = d.source_line
        if source_line is not None and secrets is not None and d.location is not None:
            col = secrets.cuts.get(d.location.line)
            if col is not None and len(source_line) >= col - 1:
                source_line = source_line[: max(col - 1, 0)] + REDACTED
        # The secrets of every file with a diagnostic: a rule comparing two files (a duplicate) may quote the other.
        out.append(dataclasses.replace(
            d,
            summary=clean(d.summary),
            detail=clean(d.detail),
            hint=clean(d.hint),
            source_line=None if source_line is None else clean(source_line),
            related=tuple(Related(r.location, clean(r.message)) for r in d.related),
        ))
    return out
