"""One config, several environments: `{value: NAME}` in the tree, filled from values files and the environment.

A node written ``{value: NAME}`` (or ``{value: NAME, default: 8082}``) is replaced by the value of NAME before the
document is checked, so the schema, the models, the rules, ``plan`` and the runtime all see the resolved value. A
template ``{value: "ws://localhost:{echo_port}/api/demo/"}`` fills each ``{name}`` into text. The mapping form is
the one ``{env: NAME}`` already has; the difference is deliberate: ``{env: ...}`` names a *secret* that stays a
reference (never resolved into the model, a plan or a diagnostic), ``{value: ...}`` a plain setting that differs
per environment. A value inside a credential field is refused (WSG015): secrets come from ``{env: ...}`` only.

Where a value comes from, first match wins:
1. the environment variable ``WSGATE_VALUE_<NAME>`` (upper case; its text is read as a number or true/false when
   it is one);
2. the values files given with ``--values FILE`` (repeatable; a later file overrides an earlier one);
3. the ``default`` written next to any use of the name in the tree (one default per name: two that differ are an
   error, WSG014).
A name with none of these is an error at its use (WSG013), so ``validate --values prod.yaml`` in CI checks the
tree as each environment will run it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .diagnostics import Diagnostic, Related, error, warning
from .document_checks import suggestion
from .source import Document, LoadResult, load_file
from .tree import Location

ENV_PREFIX = "WSGATE_VALUE_"
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)\}")
# Fields that hold credentials: a value there would put a secret in a values file (and into plan output).
CREDENTIAL_FIELDS = frozenset({"api_keys", "password", "secret", "token", "headers", "url"})
_CREDENTIAL_PARENTS = {"url": "state"}  # `url` is a credential only as the state backend's URL (it may hold one)


@dataclass
class ValueSet:
    """The values of one environment: from files, the environment, and the tree's defaults."""

    files: tuple[Path, ...] = ()
    given: dict[str, Any] = field(default_factory=dict)  # from the files, later files winning
    origin: dict[str, str] = field(default_factory=dict)  # name -> where its value came from (for plan and hints)
    where: dict[str, Location] = field(default_factory=dict)  # name -> its line in the values file that set it
    diagnostics: list[Diagnostic] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    unresolved: set[Location] = field(default_factory=set)  # positions inside references that failed


def read_values(files: Sequence[str | Path]) -> ValueSet:
    """The values files, merged in order (a later file's value wins); a file that is missing or not a mapping of
    names to values is a diagnostic."""
    out = ValueSet(tuple(Path(f) for f in files))
    for path in out.files:
        if not path.is_file():
            out.diagnostics.append(error("WSG003", f"values file {path} does not exist",
                                         hint="pass a YAML file of `name: value` lines with --values"))
            continue
        loaded = LoadResult()
        load_file(path, loaded)
        out.diagnostics += loaded.diagnostics
        for doc in loaded.documents:
            if not isinstance(doc.data, dict) or not all(isinstance(k, str) and NAME.match(k) for k in doc.data):
                out.diagnostics.append(error("WSG014", f"values file {path} is not a mapping of names to values",
                                             doc.start, hint="write `name: value` lines, e.g. `gateway_port: 9082`"))
                continue
            for name, value in doc.data.items():
                out.given[name] = value
                out.where[name] = doc.value_at((name,))
                out.origin[name] = str(path)
    return out


def _is_reference(node: Any) -> bool:
    return (isinstance(node, dict) and "value" in node and set(node) <= {"value", "default"}
            and isinstance(node["value"], str))


def _from_env(text: str) -> Any:
    """An environment variable's text as YAML would read a plain scalar: numbers and booleans typed."""
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text)
    if re.fullmatch(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", text):
        return float(text)
    return {"true": True, "false": False}.get(text.lower(), text)


def apply(documents: Sequence[Document], values: ValueSet, env: Mapping[str, str]) -> tuple[list[Document],
                                                                                            list[Diagnostic]]:
    """``documents`` with every ``{value: ...}`` node resolved; the problems found (values files' own first)."""
    problems = list(values.diagnostics)
    defaults: dict[str, tuple[Any, Location]] = {}
    uses: list[tuple[Document, tuple, dict]] = []
    for doc in documents:
        for path, node in _references(doc.data, ()):
            uses.append((doc, path, node))
            name = node["value"]
            if "default" not in node or _FIELD.search(name):
                continue
            loc = doc.value_at(path + ("default",))
            if name in defaults and defaults[name][0] != node["default"]:
                problems.append(error(
                    "WSG014", f"value '{name}' has two different defaults", loc,
                    related=(Related(defaults[name][1], "the other default"),),
                    hint="write the default once (the other uses can leave `default` out)"))
            defaults.setdefault(name, (node["default"], loc))
    if not uses:
        return list(documents), problems
    known = set(values.given) | set(defaults)

    def lookup(name: str, loc: Location) -> tuple[bool, Any]:
        env_name = ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
        if env_name in env:
            values.origin[name] = f"${env_name}"
            return True, _from_env(env[env_name])
        if name in values.given:
            values.used.add(name)
            return True, values.given[name]
        if name in defaults:
            values.origin.setdefault(name, "default")
            return True, defaults[name][0]
        problems.append(error(
            "WSG013", f"value '{name}' is not set", loc,
            hint=suggestion(name, sorted(known), listing="known values")
            or f"pass --values FILE with `{name}: ...`, set {env_name}, or write `default:` next to it"))
        return False, None

    changed: dict[int, list[tuple[tuple, Any]]] = {}
    for doc, path, node in uses:
        loc = doc.value_at(path + ("value",))
        if _in_credential(path):
            problems.append(error(
                "WSG015", f"`{{value: {node['value']}}}` in a credential field", loc,
                hint="a secret must not sit in a values file (nor in a plan): write `{env: VARIABLE}`"))
            values.unresolved |= _positions(doc, path)
            continue
        name = node["value"]
        fields = _FIELD.findall(name)
        if fields:
            parts = [lookup(f, loc) for f in fields]
            if not all(ok for ok, _ in parts):
                values.unresolved |= _positions(doc, path)
                continue
            filled = dict(zip(fields, (str(v) for _, v in parts), strict=True))
            resolved: Any = _fill(name, filled)
        else:
            if not NAME.match(name):
                problems.append(error("WSG013", f"'{name}' is not a value name", loc,
                                      hint="names are letters, digits, '_' and '-'; a template writes them "
                                           "in braces: `{value: \"ws://{host}:{port}/\"}`"))
                values.unresolved |= _positions(doc, path)
                continue
            ok, resolved = lookup(name, loc)
            if not ok:
                values.unresolved |= _positions(doc, path)
                continue
        changed.setdefault(id(doc), []).append((path, resolved))
    referenced = {f for _, _, node in uses for f in (_FIELD.findall(node["value"]) or [node["value"]])}
    for name in sorted(set(values.given) - referenced):
        problems.append(warning("WSG219", f"values file sets '{name}', which no `{{value: ...}}` in the tree uses",
                                values.where[name],
                                hint=suggestion(name, sorted(referenced), listing="values the tree uses")
                                or "delete it, or use it in the tree"))
    out = [_replaced(doc, changed[id(doc)]) if id(doc) in changed else doc for doc in documents]
    return out, problems


def _positions(doc: Document, path: tuple) -> set[Location]:
    """Where a reference that failed (and everything inside it) is written: what the schema says there is noise."""
    return {loc for table in (doc.values, doc.keys) for p, loc in table.items() if p[: len(path)] == path}


def _fill(template: str, filled: Mapping[str, str]) -> str:
    return _FIELD.sub(lambda m: filled[m.group(1)], template)


def _references(node: Any, path: tuple) -> list[tuple[tuple, dict]]:
    if _is_reference(node):
        return [(path, node)]
    out: list[tuple[tuple, dict]] = []
    if isinstance(node, dict):
        for key, child in node.items():
            out += _references(child, path + (key,))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out += _references(child, path + (i,))
    return out


def _in_credential(path: tuple) -> bool:
    for i, part in enumerate(path):
        if part in CREDENTIAL_FIELDS:
            parent = _CREDENTIAL_PARENTS.get(part)
            if parent is None or (i > 0 and path[i - 1] == parent):
                return True
    return False


def _replaced(doc: Document, changes: list[tuple[tuple, Any]]) -> Document:
    """A copy of ``doc`` with each path's node replaced; the resolved node keeps the reference's location."""
    data = _copy(doc.data)
    values = dict(doc.values)
    keys = dict(doc.keys)
    for path, resolved in changes:
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = resolved
        for table in (values, keys):
            for p in [p for p in table if len(p) > len(path) and p[: len(path)] == path]:
                del table[p]
    return dataclasses.replace(doc, data=data, values=values, keys=keys)


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node
