"""Reading YAML: files -> plain documents with a source map.

This is the only module that touches YAML. It composes every document with
ruamel.yaml (the node graph carries the 1-based line and column of every key
and value), detects duplicate keys itself (they are a diagnostic with both
positions, not an exception) and converts the nodes to plain Python data
(dict, list, str, int, float, bool, None) for the schema and the models.

A syntax error in one document does not hide the other documents of the same
file: the file is then split at its ``---`` lines and each part is read on its
own, keeping line numbers.

Speed (``benchmarks/validate_scale.py``, issue 17): with ruamel's C parser the
nodes are composed by one loader class made once (``YAML.compose_all`` builds a
class and a resolver table per call) whose resolver looks tags up in a table
built once for YAML 1.2, the only version the C parser reads; plain string
scalars skip the constructor. Without the C parser ruamel's own path is used.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver, implicit_resolvers
from ruamel.yaml.tag import Tag

try:
    from ruamel.yaml.cyaml import CParser
except ImportError:  # no ruamel.yaml.clib (e.g. PyPy): ruamel's pure parser
    CParser = None

from . import ignore
from .cache import CheckCache, FileResult, digest
from .diagnostics import Diagnostic, Related, error
from .tree import Location

YAML_SUFFIXES = (".yaml", ".yml")
# Alias expansion can blow a small file up exponentially ("billion laughs"); refuse past this.
MAX_NODES = 200_000
# Deeper nesting than this is no config, and the parser's recursion would crash the process on it.
MAX_DEPTH = 100
MERGE_TAG = "tag:yaml.org,2002:merge"
_DOC_SEPARATOR = re.compile(r"^---(\s|$)")

PathT = tuple  # a JSON-pointer-like path: ("policies", 0, "type")


@dataclass
class Document:
    """One YAML document as plain data, with where each of its nodes was written."""

    file: str
    index: int
    data: Any
    base_dir: Path
    start: Location
    values: dict[PathT, Location] = field(default_factory=dict)
    keys: dict[PathT, Location] = field(default_factory=dict)

    def value_at(self, path: Sequence[Any]) -> Location:
        """The position of the value at ``path``, or of its nearest ancestor that exists."""
        path = tuple(path)
        while path:
            loc = self.values.get(path)
            if loc is not None:
                return loc
            path = path[:-1]
        return self.values.get((), self.start)

    def key_at(self, path: Sequence[Any]) -> Location:
        """The position of the mapping key that ends ``path`` (the value's for list items)."""
        loc = self.keys.get(tuple(path))
        return loc if loc is not None else self.value_at(path)


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def find_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Diagnostic]]:
    """Every YAML file under ``paths`` (directories walked recursively, sorted), and missing paths.

    Hidden files and directories (a leading '.') are skipped; symlinked directories are not followed. Entries
    that are not regular files (a FIFO named ``x.yaml``) are listed: ``load_file`` refuses them with a diagnostic.
    """
    found: list[tuple[Path, tuple[int, int] | Path]] = []
    problems: list[Diagnostic] = []
    for root in paths:
        root = Path(root)
        if root.is_dir():
            # Sorted by parts, as Path sorts, but comparing tuples of str (Path.__lt__ costs ~4 µs a call).
            skip = ignore.matcher(root)  # `.wsgateignore`: files of other tools kept beside the config
            found += sorted((f for f in _walk(root) if skip is None or not skip(f[0])), key=lambda item: item[0].parts)
        elif root.exists():  # a file, or something posing as one (load_file refuses what is not a regular file)
            found.append((root, _identity(root)))
        else:
            problems.append(
                error(
                    "WSG003",
                    f"no such file or directory: {root}",
                    hint="pass the directory that holds the config's YAML files",
                )
            )
    # The same file reached through two arguments (or two names) is read once.
    unique: dict[tuple[int, int] | Path, Path] = {}
    for path, identity in found:
        unique.setdefault(identity, path)
    return list(unique.values()), problems


def _identity(path: Path) -> tuple[int, int] | Path:
    try:
        st = os.stat(path)
    except OSError:  # unreadable: load_file reports it
        return path.resolve()
    return (st.st_dev, st.st_ino)


def _walk(root: Path) -> Iterable[tuple[Path, tuple[int, int]]]:
    # os.walk with pruning and one stat per file: Path.rglob plus is_file() and resolve() cost ~40 µs a file.
    for top, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(top)
        for name in names:
            if not name.startswith(".") and os.path.splitext(name)[1] in YAML_SUFFIXES:
                path = base / name
                try:
                    st = os.stat(path)
                except OSError:
                    continue  # a dangling symlink: not a file, as is_file() would say
                if not stat.S_ISDIR(st.st_mode):  # a FIFO or device named *.yaml is refused by load_file, loudly
                    yield path, (st.st_dev, st.st_ino)


def load(paths: Iterable[str | Path], cache: CheckCache | None = None) -> LoadResult:
    """Read every YAML file under ``paths`` into documents; problems become diagnostics.

    With a ``cache``, a file whose content is unchanged since the cache's last check is not parsed again.
    """
    result = LoadResult()
    paths = list(paths)
    files, problems = find_files(paths)
    result.diagnostics += problems
    roots = tree_roots(paths)
    real_dirs = RealPaths()
    yaml = new_yaml()
    for path in files:
        load_file(path, result, yaml, cache, roots=roots, real_dirs=real_dirs)
    return result


def load_one(path: Path) -> LoadResult:
    """One YAML or JSON file (not a config tree: `wsgate import`'s description) through the guards a config file
    gets: no special file, nesting past ``MAX_DEPTH`` refused before parsing, aliases expanding past
    ``MAX_NODES`` refused while converting. A link is followed: the operator named this file."""
    result = LoadResult()
    load_file(path, result, new_yaml(), roots=None)
    return result


def load_file(path: Path, result: LoadResult, yaml: YAML | None = None, cache: CheckCache | None = None,
              *, roots: Sequence[str] | None = None, real_dirs: RealPaths | None = None) -> None:
    """Read one config file into ``result``; with ``roots`` (real paths), a file whose real path is outside all
    of them is refused unread (see :func:`read_guarded`)."""
    name = str(path)
    result.files.append(name)
    raw = read_guarded(path, roots, result.diagnostics, real_dirs)
    if raw is None:
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        result.diagnostics.append(
            error("WSG003", f"{name} is not UTF-8 text (byte {exc.start})", Location(name, line, 1),
                  hint="save the file as UTF-8")
        )
        return
    if cache is None:
        load_text(text, name, path.parent, result, yaml)
        return
    file_digest = digest(raw)
    stored = cache.file(name, file_digest)
    if stored is None:
        alone = LoadResult()
        load_text(text, name, path.parent, alone, yaml)
        stored = FileResult(file_digest, alone.documents, alone.diagnostics, alone.sources[name])
        cache.store(name, stored)
    result.documents += stored.documents
    result.diagnostics += stored.diagnostics
    result.sources[name] = stored.lines


# ------------------------------------------------------------- guarded reading

# Real paths under these are the kernel's views of processes and devices, never config: /proc/self/environ is a
# "regular file" to stat(), and reading it would put the process environment into a diagnostic (issue 21).
SPECIAL_ROOTS = ("/proc", "/sys", "/dev")


def tree_roots(paths: Iterable[str | Path]) -> list[str]:
    """The real paths of the config tree's roots: a directory argument, or the directory of a file argument."""
    out: list[str] = []
    for p in paths:
        p = Path(p)
        out.append(os.path.realpath(p if p.is_dir() else os.path.dirname(os.path.abspath(p))))
    return out


def inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def file_refusal(path: Path, roots: Sequence[str] | None) -> tuple[str, str, str] | None:
    """Why ``path`` must not be read, as (code, summary, hint), or None. Never opens the file.

    WSG011: its real path (links resolved) leaves every root. WSG012: it is not a regular file, or its real path
    is under /proc, /sys or /dev.
    """
    return _refusal(path, os.path.realpath(path), roots)


def _refusal(path: Path, real: str, roots: Sequence[str] | None, *, stat_it: bool = True
             ) -> tuple[str, str, str] | None:
    special = next((s for s in SPECIAL_ROOTS if inside(real, s)), None)
    if special is not None:
        return ("WSG012", f"{path} is a special file (its real path is under {special})",
                "config and the files it names are regular files in the config tree")
    if roots is not None and not any(inside(real, root) for root in roots):
        return ("WSG011", f"{path} links outside the config tree (to {real})",
                "copy the file into the config tree, or point at the file itself rather than a link to it")
    if not stat_it:
        return None
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return None  # missing or unreadable: the reader says so
    if not stat.S_ISREG(mode):
        return ("WSG012", f"{path} is {_kind_of(mode)}, not a regular file",
                "config and the files it names are regular files in the config tree")
    return None


class RealPaths:
    """Real paths of files, resolving each directory once (``os.path.realpath`` costs ~100 µs a file: an lstat
    and Python per component). Lives for one load: a directory swapped for a link is seen by the next."""

    def __init__(self) -> None:
        self._dirs: dict[str, str] = {}

    def of(self, path: Path) -> str:
        name = str(path)
        try:
            if stat.S_ISLNK(os.lstat(name).st_mode):
                return os.path.realpath(name)
        except OSError:
            return os.path.realpath(name)
        parent, base = os.path.split(os.path.abspath(name))
        real_dir = self._dirs.get(parent)
        if real_dir is None:
            real_dir = self._dirs[parent] = os.path.realpath(parent)
        return os.path.join(real_dir, base)


def read_guarded(path: Path, roots: Sequence[str] | None, out: list[Diagnostic],
                 real_dirs: RealPaths | None = None) -> bytes | None:
    """The bytes of a config file, or None with a diagnostic in ``out`` that quotes nothing of it.

    The real path is resolved once and checked (:func:`file_refusal`), then that path is opened without following
    a link (a link swapped in after the check fails the open) and without blocking (a FIFO swapped in does not
    hang the check), and checked again to be a regular file by the open descriptor. A directory of the real path
    replaced by a link between check and open is not caught: that takes write access to the tree's directories
    while the check runs.
    """
    name = str(path)
    real = (real_dirs or RealPaths()).of(path)  # resolved once: the path checked is the path opened
    refusal = _refusal(path, real, roots, stat_it=False)  # the open descriptor tells a FIFO, without a stat
    if refusal is not None:
        code, summary, hint = refusal
        out.append(error(code, summary, Location(name, 1, 1), hint=hint))
        return None
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        out.append(error("WSG003", f"cannot read {name}: {exc.strerror or exc}", Location(name, 1, 1)))
        return None
    try:
        opened = os.fstat(fd)
        mode = opened.st_mode
        if not stat.S_ISREG(mode):
            out.append(error("WSG012", f"{name} is {_kind_of(mode)}, not a regular file", Location(name, 1, 1),
                             hint="config and the files it names are regular files in the config tree"))
            return None
        chunks = []
        size = opened.st_size + 1  # one read for a file that does not grow meanwhile
        while chunk := os.read(fd, max(size, 1 << 16)):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        out.append(error("WSG003", f"cannot read {name}: {exc.strerror or exc}", Location(name, 1, 1)))
        return None
    finally:
        os.close(fd)


def new_yaml() -> YAML:
    # The C parser (ruamel.yaml.clib) composes ~10x faster than the pure one; ruamel falls back by itself.
    return YAML(typ="safe", pure=False)


# ------------------------------------------------------------- composing

_STR = Tag(suffix="tag:yaml.org,2002:str")
_SEQ = Tag(suffix="tag:yaml.org,2002:seq")
_MAP = Tag(suffix="tag:yaml.org,2002:map")


def _implicit_table() -> tuple[dict[str, list[tuple[Tag, Any]]], list[tuple[Tag, Any]]]:
    """YAML 1.2's implicit tags by a plain scalar's first character, as ruamel's resolver applies them."""
    by_first: dict[str, list[tuple[Tag, Any]]] = {}
    any_first: list[tuple[Tag, Any]] = []  # rules without a first character apply after the others
    for versions, tag, regexp, first in implicit_resolvers:
        if (1, 2) in versions:
            chars: list[str | None] = list(first) if first else [None]
            for ch in chars:
                (any_first if ch is None else by_first.setdefault(ch, [])).append((Tag(suffix=tag), regexp))
    return {ch: rules + any_first for ch, rules in by_first.items()}, any_first


_IMPLICIT, _IMPLICIT_ANY = _implicit_table()


class _Resolver(VersionedResolver):
    """ruamel's YAML 1.2 resolver with its table built once (it rebuilds it per file and looks up the
    version per scalar) and one shared Tag object per tag."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in _IMPLICIT.get(value[:1], _IMPLICIT_ANY):
                    if regexp.match(value):
                        return tag
            return _STR
        return _SEQ if kind is SequenceNode else _MAP


if CParser is not None:

    class _Composer(CParser, _Resolver):
        """ruamel's C reader, scanner, parser and composer, with the resolver above."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _Resolver.__init__(self, loadumper=self)


def _compose_all(text: str, yaml: YAML) -> Iterable[Node]:
    if CParser is None:
        yield from yaml.compose_all(text)
        return
    composer = _Composer(text)
    try:
        while composer.check_node():
            yield composer.get_node()
    finally:
        composer.dispose()


def load_text(text: str, name: str, base_dir: Path, result: LoadResult, yaml: YAML | None = None) -> None:
    """Parse one file's text; on a syntax error, retry part by part so other documents still count."""
    yaml = yaml or new_yaml()
    result.sources[name] = text.splitlines()
    deep = too_deep(text, MAX_DEPTH)
    if deep is not None:
        result.diagnostics.append(error("WSG007", f"nesting deeper than {MAX_DEPTH} levels", Location(name, *deep),
                                        hint="a resource nests a few levels; this file is not a config"))
        return
    reader = _Reader(name, base_dir, yaml)
    try:
        docs = reader.read(text, line_offset=0, first_index=0)
    except YAMLError as exc:
        docs = None
        first_error = exc
    if docs is not None:
        result.documents += docs
        result.diagnostics += reader.diagnostics
        return
    # Split at document markers and read each part alone (line numbers kept by padding).
    parts = _split_documents(text)
    if len(parts) <= 1:
        result.diagnostics += reader.diagnostics
        result.diagnostics.append(_syntax_diagnostic(first_error, name, result.sources[name]))
        return
    index = 0
    for offset, chunk in parts:
        part_reader = _Reader(name, base_dir, yaml)
        try:
            docs = part_reader.read(chunk, line_offset=offset, first_index=index)
        except YAMLError as exc:
            result.diagnostics += part_reader.diagnostics
            result.diagnostics.append(_syntax_diagnostic(exc, name, result.sources[name], line_offset=offset))
            index += 1
            continue
        result.documents += docs
        result.diagnostics += part_reader.diagnostics
        index += max(len(docs), 1)


_LEAD = re.compile(r"^[ \-]*", re.M)


def too_deep(text: str, limit: int) -> tuple[int, int] | None:
    """Where block indentation plus flow brackets first nest past ``limit`` levels (line, column), else None.

    A linear scan, before any parsing: quotes are followed within a line, which is enough for a guard. Most
    files are ruled out at C speed first: nesting is at most one level per leading space or dash plus one per
    bracket.
    """
    widest = max((len(m) for m in _LEAD.findall(text)), default=0)
    if widest + 1 + text.count("[") + text.count("{") <= limit:
        return None
    indents: list[int] = []
    flow = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip(" ")
        block = len(indents)
        if flow == 0 and stripped and not stripped.startswith("#"):
            indent = len(line) - len(stripped)
            while indents and indents[-1] >= indent:
                indents.pop()
            indents.append(indent)
            dashes = len(stripped) - len(stripped.lstrip("- "))  # `- - - x` nests on one line
            block = len(indents) + dashes // 2
            if block > limit:
                return lineno, 1
        quote = ""
        previous = " "
        for col, ch in enumerate(line, 1):
            if quote:
                if ch == quote:
                    quote = ""
            elif ch in "\"'" and previous in " :,[{-":
                quote = ch
            elif ch == "#" and previous == " ":
                break
            elif ch in "[{":
                flow += 1
                if block + flow > limit:
                    return lineno, col
            elif ch in "]}":
                flow = max(flow - 1, 0)
            previous = ch
    return None


def _split_documents(text: str) -> list[tuple[int, str]]:
    lines = text.splitlines(keepends=True)
    parts: list[tuple[int, str]] = []
    start = 0
    for i, line in enumerate(lines):
        if _DOC_SEPARATOR.match(line) and i > start:
            parts.append((start, "".join(lines[start:i])))
            start = i
    parts.append((start, "".join(lines[start:])))
    return [(offset, chunk) for offset, chunk in parts if chunk.strip()]


def _syntax_diagnostic(exc: YAMLError, name: str, lines: list[str], line_offset: int = 0) -> Diagnostic:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    if mark is not None and context_mark is not None and mark.line + line_offset >= len(lines):
        # "unexpected end of stream" points past the last line; where the construct began is more useful.
        mark = context_mark
    if mark is not None:
        line, col = mark.line + 1 + line_offset, mark.column + 1
    else:
        line, col = 1 + line_offset, 1
    if isinstance(exc, MarkedYAMLError):
        problem = exc.problem or exc.context or "invalid YAML"
        context = exc.context if exc.problem and exc.context else ""
    else:
        problem, context = str(exc).splitlines()[0] if str(exc) else "invalid YAML", ""
    problem = " ".join(str(problem).split())
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in source[: len(source) - len(source.lstrip())] or "'\\t'" in problem:
        return error(
            "WSG004",
            "tab character in indentation",
            Location(name, line, col),
            detail=f"YAML said: {problem}",
            hint="YAML indents with spaces only; replace the tabs with spaces",
        )
    hint = "check the indentation and the quoting around this position"
    if "mapping values are not allowed" in problem:
        hint = "a value containing ': ' must be quoted, or a key is indented too far"
    elif "quoted scalar" in str(context):
        hint = "a quoted value is never closed; add the closing quote"
    elif "found undefined alias" in problem or "found undefined anchor" in problem:
        hint = "define the anchor (&name) before its alias (*name)"
    return error(
        "WSG001",
        f"invalid YAML: {problem}",
        Location(name, line, col),
        detail=context,
        hint=hint,
    )


class _Reader:
    """Composes documents and converts nodes to plain data, recording positions and duplicate keys."""

    def __init__(self, name: str, base_dir: Path, yaml: YAML) -> None:
        self.name = name
        self.base_dir = base_dir
        self.diagnostics: list[Diagnostic] = []
        self._yaml = yaml
        self._constructor = self._yaml.constructor
        self._offset = 0
        self._nodes = 0

    def read(self, text: str, *, line_offset: int, first_index: int) -> list[Document]:
        self._offset = line_offset
        docs: list[Document] = []
        index = first_index
        for root in _compose_all(text, self._yaml):
            if root is None:
                continue
            doc = Document(self.name, index, None, self.base_dir, self._loc(root))
            self._nodes = 0
            doc.data = self._convert(root, (), doc, set())
            docs.append(doc)
            index += 1
        return docs

    def _loc(self, node: Node) -> Location:
        mark = node.start_mark
        return Location(self.name, mark.line + 1 + self._offset, mark.column + 1)

    def _convert(self, node: Node, path: PathT, doc: Document, active: set[int]) -> Any:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            if self._nodes == MAX_NODES + 1:
                self.diagnostics.append(
                    error("WSG005", "document too large (aliases expand past 200000 nodes)", self._loc(node),
                          hint="avoid deeply nested aliases")
                )
            return None
        doc.values.setdefault(path, self._loc(node))
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if id(node) in active:
            self.diagnostics.append(error("WSG005", "recursive alias", self._loc(node),
                                          hint="an alias may not refer to a node that contains it"))
            return None
        active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self._convert(item, path + (i,), doc, active) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self._mapping(node, path, doc, active)
            return None
        finally:
            active.discard(id(node))

    def _mapping(self, node: MappingNode, path: PathT, doc: Document, active: set[int]) -> dict:
        out: dict[str, Any] = {}
        merged: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.ctag is not _STR and key_node.tag == MERGE_TAG:
                merged.append(value_node)
                continue
            key = self._key(key_node)
            key_loc = self._loc(key_node)
            child = path + (key,)
            if key in out:
                first = doc.keys.get(child)
                self.diagnostics.append(
                    error(
                        "WSG002",
                        f"duplicate key '{key}' in this mapping",
                        key_loc,
                        related=(Related(first, "first written here"),) if first else (),
                        hint="YAML keeps only one of them; delete or merge the duplicate",
                    )
                )
                continue
            doc.keys[child] = key_loc
            out[key] = self._convert(value_node, child, doc, active)
        # `<<: *base` merge keys: explicit keys win over merged ones.
        for value_node in merged:
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for src in sources:
                if not isinstance(src, MappingNode):
                    continue
                merged_in = self._mapping(src, path, Document(self.name, 0, None, self.base_dir, doc.start), active)
                for key, value in merged_in.items():
                    if key not in out:
                        out[key] = value
        return out

    def _key(self, node: Node) -> str:
        if isinstance(node, ScalarNode):
            value = self._scalar(node)
            return value if isinstance(value, str) else str(node.value)
        # A complex key (`? [a, b]`) never names a field; keep its text so the schema reports it.
        return f"<{type(node).__name__.replace('Node', '').lower()} key>"

    def _scalar(self, node: ScalarNode) -> Any:
        if node.ctag is _STR:  # a plain or quoted string: its text is its value
            return node.value
        try:
            value = self._constructor.construct_non_recursive_object(node)
        except YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.diagnostics.append(
                error("WSG001", f"invalid YAML: {' '.join(str(problem).split())}", self._loc(node),
                      hint="remove the tag or quote the value")
            )
            return None
        except Exception as exc:  # the constructor raises plain errors for some malformed scalars
            self.diagnostics.append(error("WSG001", f"invalid YAML value: {exc}", self._loc(node)))
            return None
        return value
