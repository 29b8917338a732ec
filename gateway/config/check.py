"""The check pipeline: YAML files -> Config, or diagnostics.

``check()`` is the one path from files to a model that ``validate``, ``plan``,
``run`` and a reload all take: YAML (with a source map) -> JSON Schema ->
pydantic models -> cross-resource rules. Every problem of every file is
reported in one run; the config is returned only when there is no error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from . import redact, rules
from .cache import CheckCache
from .diagnostics import Diagnostic, cut_long_quotes, error, quotable
from .document_checks import check_api_version, check_kind, check_lossy_numbers, check_model, check_schema
from .models import KINDS
from .salvage import salvage
from .source import Document, load
from .tree import Config, Loaded
from .values import ValueSet, read_values
from .values import apply as apply_values

__all__ = ["CheckResult", "check", "with_source_lines"]


@dataclass
class CheckResult:
    config: Config | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    sources: Mapping[str, list[str]] = field(default_factory=dict, repr=False)  # file -> lines, to quote
    # What the diagnostics of a later stage (the compile in gateway.build) are scrubbed against.
    documents: Sequence[Document] = field(default_factory=tuple, repr=False)
    unversioned: int = 0  # documents without `apiVersion` (read as wsgate/v1; validate says so in a note)
    foreign: Mapping[str, int] = field(default_factory=dict)  # skipped documents of other formats, by apiVersion
    values: ValueSet | None = None  # the environment's values the tree was resolved with (values.py)

    @property
    def ok(self) -> bool:
        return self.config is not None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if not d.is_error]


def check(
    paths: Sequence[str | Path], *, env: Mapping[str, str] | None = None, cache: CheckCache | None = None,
    import_transforms: bool = False, values: Sequence[str | Path] = (),
) -> CheckResult:
    """Check the YAML tree under ``paths``; ``env`` (default: ``os.environ``) resolves `{env: ...}` keys.

    ``values`` are the environment's values files (``--values``): `{value: NAME}` nodes are resolved from them,
    from ``WSGATE_VALUE_*`` in ``env`` and from the tree's defaults before anything is checked (values.py).

    A ``cache`` (see ``cache.py``) kept between checks of the same tree skips the files that did not change.
    Transform callables are checked statically (no code from the tree runs) unless ``import_transforms``.
    ``gateway.build.pipeline.build`` adds the compile step; validate, plan, run and the reload call that.
    """
    if cache is None:
        with _collection_paused():
            return _check(paths, env, None, import_transforms, values)
    cache.begin()
    try:
        with _collection_paused():
            return _check(paths, env, cache, import_transforms, values)
    finally:
        cache.end()


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector while a check allocates: the documents, source maps and models it
    builds hold no cycles, yet at 20,000 documents the collector's passes over them cost a third of the check."""
    global _pausers, _was_enabled
    with _pause_lock:
        if _pausers == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pausers += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pausers -= 1
            if _pausers == 0 and _was_enabled:
                gc.enable()


_pause_lock = threading.Lock()
_pausers = 0  # checks running now (in worker threads during reloads)
_was_enabled = True


@dataclass(frozen=True)
class _Verdict:
    """What one document's own checks found: its kind and name (for references), its problems, and its entry for
    the rules (the model when it passed, a stand-in holding only its references when it failed its schema)."""

    kind: str | None
    name: str | None
    diagnostics: list[Diagnostic]
    entry: rules.Entry | None = None
    partial: rules.Entry | None = None
    salvaged: bool = False  # the entry is what is left of a document that failed its schema (salvage.py)
    versioned: bool = True  # names its apiVersion (validate notes those that do not)
    foreign: str | None = None  # the apiVersion of another format's document (skipped; validate notes how many)


def _foreign_format(doc: Document) -> str | None:
    """The apiVersion of another tool's document (`apps/v1` Deployment, `v1` ConfigMap); None for ours.

    A kind of ours under a bare version (`apiVersion: v1`, `kind: API`) is a wsgate document with a wrong
    version (WSG010 says so); under a group (`gateway.networking.k8s.io/v1`, `kind: Gateway`) it is not ours."""
    data = doc.data
    version = data.get("apiVersion") if isinstance(data, dict) else None
    if not isinstance(version, str) or not version or version.startswith("wsgate/"):
        return None
    if data.get("kind") in KINDS and "/" not in version:
        return None
    return version


def _check_document(doc: Document, lines: list[str]) -> _Verdict:
    foreign = _foreign_format(doc)
    if foreign is not None:  # a Kubernetes or Prometheus document beside the config: not ours, not checked
        return _Verdict(None, None, [], foreign=foreign)
    kind, problems = check_kind(doc)
    if kind is None:
        return _Verdict(None, None, problems)
    name = doc.data.get("name")
    name = name if isinstance(name, str) else None
    versioned, problems = check_api_version(doc)
    if problems:  # another format: its fields mean what that version says, not what this schema says
        return _Verdict(kind, name, problems)
    diagnostics = check_lossy_numbers(doc, kind, lines)
    problems = check_schema(doc, kind)
    if problems:
        salvaged = salvage(doc, kind)
        if salvaged is not None:  # its other fields are still checked by the rules, in this same run
            kept, kept_model = salvaged
            rescued = rules.Entry(kind, str(kept.data["name"]), kept_model, kept)
            return _Verdict(kind, name, diagnostics + problems, entry=rescued, salvaged=True,
                            versioned=versioned)
        return _Verdict(kind, name, diagnostics + problems, partial=_references_of(doc, kind),
                        versioned=versioned)
    model, problems = check_model(doc, kind)
    # A valid model has a name.
    entry = rules.Entry(kind, str(doc.data["name"]), model, doc) if model is not None else None
    return _Verdict(kind, name, diagnostics + problems, entry=entry, versioned=versioned)


def _check(paths: Sequence[str | Path], env: Mapping[str, str] | None, cache: CheckCache | None,
           import_transforms: bool, values_files: Sequence[str | Path]) -> CheckResult:
    env = os.environ if env is None else env
    roots = [Path(p) for p in paths] or [Path(".")]
    loaded = load(roots, cache)
    diagnostics = list(loaded.diagnostics)
    values = read_values(values_files)
    # Resolved copies of the documents that use `{value: ...}`; the others (and the cache's verdicts) unchanged.
    documents, problems = apply_values(loaded.documents, values, env)
    diagnostics += problems
    foreign: dict[str, int] = {}
    entries: list[rules.Entry] = []
    partials: list[rules.Entry] = []  # documents that failed their schema: only their references are checked
    known: dict[str, set[str]] = {}
    cut_short: list[Document] = []  # salvaged documents: what they lack was reported by the schema
    unversioned = 0

    def check_one(doc: Document) -> _Verdict:
        return _check_document(doc, loaded.sources.get(doc.file, []))

    for doc in documents:
        verdict = cache.verdict(doc, check_one) if cache is not None else check_one(doc)
        diagnostics += verdict.diagnostics
        if verdict.kind is not None and verdict.name is not None:
            known.setdefault(verdict.kind, set()).add(verdict.name)
        if verdict.entry is not None:
            entries.append(verdict.entry)
        if verdict.partial is not None:
            partials.append(verdict.partial)
        if verdict.salvaged and verdict.entry is not None:
            cut_short.append(verdict.entry.doc)
        unversioned += verdict.kind is not None and not verdict.versioned
        if verdict.foreign is not None:
            foreign[verdict.foreign] = foreign.get(verdict.foreign, 0) + 1

    if len(documents) == sum(foreign.values()) and not any(d.is_error for d in diagnostics):
        diagnostics.append(
            error(
                "WSG006",
                f"no resources found in {', '.join(str(r) for r in roots)}",
                hint="a config is a directory of *.yaml files, each holding one or more resources",
            )
        )

    dirs = [r if r.is_dir() else r.parent for r in roots]
    diagnostics += rules.run(entries, known=known, env=env, roots=dirs, sources=loaded.sources,
                             import_transforms=import_transforms)
    if partials:
        ports = [e for e in entries if e.kind == "Port"]
        diagnostics += rules.run(ports + partials, known=known, env=env, roots=dirs, sources=loaded.sources,
                                 only=(rules.api_port_references, rules.application_api_references))
    diagnostics = [d for d in diagnostics if not _about_a_cut(d, cut_short) and not _inside_a_failed_value(d, values)]
    diagnostics = cut_long_quotes(redact.scrub(with_source_lines(diagnostics, loaded.sources), documents))
    diagnostics.sort(key=Diagnostic.sort_key)

    if any(d.is_error for d in diagnostics):
        return CheckResult(None, diagnostics, loaded.files, loaded.sources, documents, unversioned, foreign, values)
    return CheckResult(_build(dirs[0], entries, values.files), diagnostics, loaded.files, loaded.sources, documents,
                       unversioned, foreign, values)


# Rules that complain about something missing, or a setting another one overrides or lacks: in a salvaged document
# the cut may be what made it so (a cut routing policy leaves weights unread), and the schema already said why.
_ABSENCE_CODES = frozenset({"WSG201", "WSG204", "WSG230", "WSG231"})


def _about_a_cut(d: Diagnostic, cut_short: list[Document]) -> bool:
    """Whether ``d`` reports an absence inside a salvaged document (where the absence is the cut's doing)."""
    if d.code not in _ABSENCE_CODES or d.location is None:
        return False
    for doc in cut_short:
        lines = [loc.line for loc in doc.values.values() if loc.file == doc.file] + [doc.start.line]
        if d.location.file == doc.file and min(lines) <= d.location.line <= max(lines):
            return True
    return False


def _inside_a_failed_value(d: Diagnostic, values: ValueSet) -> bool:
    """Whether ``d`` is the schema's word on a `{value: ...}` left unresolved (WSG013/WSG015 said why)."""
    return d.location in values.unresolved and d.code not in ("WSG013", "WSG014", "WSG015")


# The reference lists a document that failed its schema can still be checked: one run of validate should
# report an unknown port beside a misspelt field, not after it is fixed.
_REFERENCE_LISTS = {"API": "ports", "Application": "apis"}


def _references_of(doc: Document, kind: str) -> rules.Entry | None:
    """A stand-in entry holding only the well-formed reference list of a schema-failed document."""
    field_name = _REFERENCE_LISTS.get(kind)
    name = doc.data.get("name")
    names = doc.data.get(field_name) if field_name else None
    if field_name is None or not isinstance(name, str) or not isinstance(names, list):
        return None
    if not all(isinstance(n, str) for n in names):
        return None
    return rules.Entry(kind, name, SimpleNamespace(**{field_name: names}), doc)


# A diagnostic a rule located at a credential (``at_credential``) has its quoted line cut at that column. Any
# other (a YAML syntax error, a schema error) may point at a line holding a credential too: such a line is
# recognised by its own key or the key of the block it sits in.
_CREDENTIAL_KEYS = frozenset({"api_keys", "password", "secret"})
_KEY = re.compile(r"^(\s*)(?:-\s+)?([A-Za-z_][\w-]*)\s*:")


def _credential_part(lines: Sequence[str], index: int) -> int | None:
    """Where the credential on line ``index`` starts, if the line is an `api_keys`, `password` or `secret`
    key or an item of such a block; None for other lines."""
    line = lines[index]
    stripped = line.lstrip()
    indent = len(line) - len(stripped)
    match = _KEY.match(line)
    if match and match.group(2) in _CREDENTIAL_KEYS:
        return match.end()
    is_item = stripped.startswith("-")
    if is_item and re.match(r"-\s+env\s*:(\s|$)", stripped):
        return None  # `- env: VARIABLE`: names where the key is, not the key
    for above in reversed(lines[:index]):
        text = above.lstrip()
        if not text or text.startswith("#"):
            continue
        level = len(above) - len(text)
        if level < indent or (is_item and level == indent and not text.startswith("-")):
            parent = _KEY.match(above)
            if parent is None or parent.group(2) not in _CREDENTIAL_KEYS:
                return None
            return indent + (1 if is_item else 0)
    return None


def with_source_lines(diagnostics: list[Diagnostic], sources: Mapping[str, list[str]]) -> list[Diagnostic]:
    out = []
    for d in diagnostics:
        loc = d.location
        if loc is not None and d.source_line is None:
            lines = sources.get(loc.file)
            if lines and 0 < loc.line <= len(lines):
                line = lines[loc.line - 1]
                if d.at_credential:
                    line = line[: max(loc.col - 1, 0)] + "[redacted]"
                else:
                    cut = _credential_part(lines, loc.line - 1)
                    if cut is not None:
                        line = line[:cut] + " [redacted]"
                quoted = quotable(line)
                if quoted is not None:  # a line with control characters is not quoted at all
                    d = dataclasses.replace(d, source_line=quoted)
        out.append(d)
    return out


def _build(root: Path, entries: list[rules.Entry], values_files: tuple[Path, ...]) -> Config:
    kinds = ("Port", "API", "Application", "EchoServer", "Gateway")
    groups: dict[str, dict[str, Loaded]] = {kind: {} for kind in kinds}
    for e in entries:
        groups[e.kind].setdefault(e.name, Loaded(e.model, e.doc.start, e.doc.base_dir, e.doc.value_at))
    gateways = list(groups["Gateway"].values())
    config = Config(
        root=root,
        ports=groups["Port"],
        apis=groups["API"],
        applications=groups["Application"],
        echo_servers=groups["EchoServer"],
        gateway=gateways[0] if gateways else None,
        values_files=values_files,
    )
    _ = config.file_fingerprints  # read the referenced files now, as they are when the tree is checked
    return config
