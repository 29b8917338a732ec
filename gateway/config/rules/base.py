"""What every rule shares: the entries it reads, its context, the registry, and the helpers several
kinds use (reference lists, files that must exist)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..diagnostics import Diagnostic, error, warning
from ..document_checks import suggestion
from ..source import Document, file_refusal, inside
from ..tree import Location


@dataclass
class Entry:
    """A resource whose document passed its schema and model."""

    kind: str
    name: str
    model: Any
    doc: Document


@dataclass
class RuleContext:
    entries: list[Entry]
    known: Mapping[str, set[str]]  # names by kind, including documents that failed their checks
    env: Mapping[str, str]
    roots: list[Path]
    sources: Mapping[str, list[str]]
    import_transforms: bool = False  # False: transform callables are checked statically, no tree code runs
    out: list[Diagnostic] = field(default_factory=list)

    def of(self, kind: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]

    def firsts(self, kind: str) -> dict[str, Entry]:
        """The first resource of each name (duplicates are reported separately)."""
        out: dict[str, Entry] = {}
        for e in self.of(kind):
            out.setdefault(e.name, e)
        return out

    def column_of(self, loc: Location, value: str, index: int) -> Location:
        """The position of ``value[index]`` when the scalar is written plainly or quoted on its line."""
        lines = self.sources.get(loc.file, [])
        line = lines[loc.line - 1] if 0 < loc.line <= len(lines) else ""
        rest = line[loc.col - 1 :]
        if rest.startswith(value):
            return Location(loc.file, loc.line, loc.col + index)
        if rest[:1] in "\"'" and rest[1:].startswith(value):
            return Location(loc.file, loc.line, loc.col + 1 + index)
        return loc


Rule = Callable[[RuleContext], None]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def run(
    entries: list[Entry],
    *,
    known: Mapping[str, set[str]],
    env: Mapping[str, str],
    roots: list[Path],
    sources: Mapping[str, list[str]],
    only: Iterable[Rule] | None = None,
    import_transforms: bool = False,
) -> list[Diagnostic]:
    """Every rule (or ``only`` these) over ``entries``; the diagnostics they found."""
    ctx = RuleContext(entries, known, env, roots, sources, import_transforms)
    for fn in RULES if only is None else only:
        fn(ctx)
    return ctx.out




def listed_once(ctx: RuleContext, entry: Any, field_name: str, what: str) -> Iterable[tuple[str, Location]]:
    """The names of a reference list, each with its location; a repeated name is warned about and skipped."""
    seen: set[str] = set()
    for i, name in enumerate(getattr(entry.model, field_name)):
        loc = entry.doc.value_at((field_name, i))
        if name in seen:
            ctx.out.append(warning("WSG205", f"{what} '{name}' is listed twice", loc, hint="delete the repetition"))
            continue
        seen.add(name)
        yield name, loc


def unknown_reference(ctx: RuleContext, code: str, summary: str, loc: Location | None, name: str,
                      known: set[str], listing: str, otherwise: str) -> None:
    """A reference to a resource nobody declares: "did you mean" among ``known``, else how to declare it."""
    ctx.out.append(error(code, summary, loc, hint=suggestion(name, sorted(known), listing=listing) or otherwise))



def named_file_refusal(roots: Iterable[Path], path: Path) -> tuple[str, str, str] | None:
    """Why a file the config names must not be read, as (code, summary, hint), or None (issue 21).

    Never: a special file (under /proc, /sys, /dev, or not a regular file: a FIFO, a device, a directory), and a
    path written inside the config tree whose real path leaves it (a link out, which hides where the file is).
    A path written outside the tree (absolute, or with `..`), such as a mounted secret, is read: a reviewer
    sees it in the YAML.
    """
    refusal = file_refusal(path, None)
    if refusal is not None:
        return refusal
    written = os.path.normpath(os.path.abspath(path))
    lexical = [os.path.normpath(os.path.abspath(r)) for r in roots]
    if any(inside(written, r) for r in lexical):
        real = os.path.realpath(path)
        if not any(inside(real, os.path.realpath(r)) for r in lexical):
            return ("WSG011", f"{path.name} in the config tree links outside it (to {real})",
                    "copy the file into the config tree, or write the path of the file itself")
    return None


def refused(ctx: RuleContext, e: Entry, at: tuple, path: Path) -> bool:
    """Report and say whether the named file at ``path`` must not be read (see :func:`named_file_refusal`)."""
    refusal = named_file_refusal(ctx.roots, path)
    if refusal is None:
        return False
    code, summary, hint = refusal
    ctx.out.append(error(code, summary, e.doc.value_at(at), hint=hint))
    return True


def must_exist(ctx: RuleContext, e: Entry, at: tuple, relative: str, what: str) -> None:
    path = Path(relative) if Path(relative).is_absolute() else e.doc.base_dir / relative
    if refused(ctx, e, at, path):
        return
    if not path.is_file():
        ctx.out.append(
            error(
                "WSG118",
                f"{what} {relative} does not exist" if not path.exists() else f"{what} {relative} is not a file",
                e.doc.value_at(at),
                hint=f"relative paths start at the declaring file's directory ({e.doc.base_dir})",
            )
        )


def cert_and_key_must_exist(ctx: RuleContext, e: Entry, at: tuple, cert: str | None, key: str | None) -> None:
    """A TLS block's ``cert`` and ``key`` files, under ``at``; an unset (optional) one is not checked."""
    if cert is not None:
        must_exist(ctx, e, at + ("cert",), cert, "certificate file")
    if key is not None:
        must_exist(ctx, e, at + ("key",), key, "key file")


def written_endpoints(e: Entry) -> int:
    """How many endpoints the document lists: a salvaged model may have lost one to a schema error (`weight: 0`),
    and "a single endpoint" must not be said of two."""
    upstream = e.doc.data.get("upstream") if isinstance(e.doc.data, dict) else None
    endpoints = upstream.get("endpoints") if isinstance(upstream, dict) else None
    return len(endpoints) if isinstance(endpoints, list) else len(e.model.upstream.endpoints)
