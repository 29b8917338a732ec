"""Diagnostics: one structure for every problem found in a config, and its renderers.

A :class:`Diagnostic` is what ``validate``, ``plan``, ``run`` and a reload all
report. It is rendered three ways from the same fields: text for people and
editors (``file:line:col: error WSG104: summary`` with the source line and a
caret), JSON for machines, and GitHub workflow annotations for pull requests.

Codes are stable (documented in ``docs/diagnostics.md``): ``WSG0xx`` loading
and YAML, ``WSG1xx`` errors, ``WSG2xx`` warnings.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .tree import Location

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Related:
    """Another place that takes part in the problem (the first definition of a duplicate)."""

    location: Location
    message: str


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in the config, pointing at the most precise node that shows it."""

    severity: Severity
    code: str
    summary: str
    location: Location | None = None
    detail: str = ""
    hint: str = ""
    source_line: str | None = None
    related: tuple[Related, ...] = ()
    at_credential: bool = False  # the location is a secret's value: a quoted source line is cut there

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def sort_key(self) -> tuple:
        loc = self.location
        return (loc.file, loc.line, loc.col, self.code) if loc else ("", 0, 0, self.code)

    def headline(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.severity} {self.code}: {self.summary}"

    def to_dict(self) -> dict:
        loc = self.location
        return {
            "severity": self.severity,
            "code": self.code,
            "summary": self.summary,
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "col": loc.col if loc else None,
            "detail": self.detail or None,
            "hint": self.hint or None,
            "source_line": self.source_line,
            "related": [
                {"file": r.location.file, "line": r.location.line, "col": r.location.col, "message": r.message}
                for r in self.related
            ],
        }


# A quoted source line is cut to this many characters: a 200 KB line is a file, not a line to show (issue 21).
QUOTE_WIDTH = 200
CUT_MARKER = " …[cut]"


def quotable(line: str) -> str | None:
    """``line`` if a diagnostic may quote it, or None when it holds control characters (a NUL, an escape): such
    a line is not config text (``/proc/self/environ`` is NUL-separated), and terminals act on them."""
    line = line.rstrip("\r\n")
    if any((ch < " " and ch != "\t") or ch == "\x7f" for ch in line):
        return None
    return line


def cut_long_quotes(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Every quoted source line cut to ``QUOTE_WIDTH`` characters with a marker. Runs after redaction, which needs
    the whole line to find the secrets on it."""
    out = []
    for d in diagnostics:
        if d.source_line is not None and len(d.source_line) > QUOTE_WIDTH:
            d = dataclasses.replace(d, source_line=d.source_line[:QUOTE_WIDTH] + CUT_MARKER)
        out.append(d)
    return out


def error(code: str, summary: str, location: Location | None = None, **kw) -> Diagnostic:
    return Diagnostic("error", code, summary, location, **kw)


def warning(code: str, summary: str, location: Location | None = None, **kw) -> Diagnostic:
    return Diagnostic("warning", code, summary, location, **kw)


def count(diagnostics: Iterable[Diagnostic]) -> tuple[int, int]:
    """(errors, warnings)."""
    errors = warnings = 0
    for d in diagnostics:
        if d.is_error:
            errors += 1
        else:
            warnings += 1
    return errors, warnings


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary_line(diagnostics: Sequence[Diagnostic]) -> str:
    errors, warnings = count(diagnostics)
    return f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"


# ------------------------------------------------------------------ text


def _caret_block(d: Diagnostic) -> list[str]:
    if d.location is None or d.source_line is None:
        return []
    line = d.source_line.rstrip("\r\n")
    number = str(d.location.line)
    gutter = " " * len(number)
    # Tabs before the column keep their width in the caret line so the caret lines up; past a cut, the caret
    # stands at the cut.
    prefix = "".join(ch if ch == "\t" else " " for ch in line[: min(max(d.location.col - 1, 0), QUOTE_WIDTH)])
    return [f" {number} | {line}", f" {gutter} | {prefix}^"]


def render_text(diagnostics: Sequence[Diagnostic]) -> str:
    """Compiler-style text: headline, source line with a caret, detail, notes and hint."""
    out: list[str] = []
    for d in diagnostics:
        out.append(d.headline())
        out.extend(_caret_block(d))
        if d.detail:
            out.extend(f"  {line}" for line in d.detail.splitlines())
        for r in d.related:
            out.append(f"  note: {r.message}: {r.location}")
        if d.hint:
            out.append(f"  hint: {d.hint}")
    return "\n".join(out) + ("\n" if out else "")


# ------------------------------------------------------------------ json


def render_json(diagnostics: Sequence[Diagnostic]) -> str:
    errors, warnings = count(diagnostics)
    return json.dumps(
        {
            "valid": errors == 0,
            "errors": errors,
            "warnings": warnings,
            "diagnostics": [d.to_dict() for d in diagnostics],
        },
        indent=2,
    ) + "\n"


# ---------------------------------------------------------------- github


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(diagnostics: Sequence[Diagnostic]) -> str:
    """GitHub Actions workflow commands: one ``::error``/``::warning`` annotation per diagnostic."""
    out: list[str] = []
    for d in diagnostics:
        props = []
        if d.location is not None:
            props += [
                f"file={escape_property(d.location.file)}",
                f"line={d.location.line}",
                f"col={d.location.col}",
            ]
        props.append(f"title={escape_property(d.code)}")
        message = d.summary
        if d.detail:
            message += "\n" + d.detail
        for r in d.related:
            message += f"\nnote: {r.message}: {r.location}"
        if d.hint:
            message += "\nhint: " + d.hint
        out.append(f"::{d.severity} {','.join(props)}::{escape_data(message)}")
    return "\n".join(out) + ("\n" if out else "")


RENDERERS = {"text": render_text, "json": render_json, "github": render_github}


def render(diagnostics: Sequence[Diagnostic], fmt: str = "text") -> str:
    return RENDERERS[fmt](diagnostics)

