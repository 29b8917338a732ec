"""What is left of a document that failed its schema, so its other fields are still checked in the same run.

A misspelt policy field must not hide the trailing-slash error in the same
file's upstream until the typo is fixed: CI would take two rounds. So the
parts the schema refuses are cut away (an unknown key; the list item holding
an error, such as one policy; an optional field with a bad value) and the
rest goes through the model and the cross-resource rules like any document.
The source map follows the cuts, so a diagnostic on what is left points at
the right line. When too much is wrong (a required top-level field), nothing
is salvaged and only the schema's own diagnostics are reported.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from pydantic import BaseModel, ValidationError

from .models import KINDS
from .schema import validator
from .source import Document

MAX_CUTS = 50  # past this many cuts, what is left says little about the document


def salvage(doc: Document, kind: str) -> tuple[Document, BaseModel] | None:
    """``doc`` without the parts its schema refuses, and its model; None when nothing useful is left."""
    current = dataclasses.replace(doc, data=copy.deepcopy(doc.data), values=dict(doc.values), keys=dict(doc.keys))
    check = validator(kind)
    for _ in range(MAX_CUTS):
        errors = sorted(check.iter_errors(current.data), key=lambda e: len(e.absolute_path), reverse=True)
        if not errors:
            try:
                return current, KINDS[kind].model_validate(current.data)
            except ValidationError:
                return None
        unknown = [e for e in errors if e.validator == "additionalProperties" and isinstance(e.instance, dict)]
        if unknown:
            for err in unknown:  # keys of mappings: cutting one moves no other path
                allowed = err.schema.get("properties", {})
                node = _at(current.data, tuple(err.absolute_path))
                for key in [k for k in node if k not in allowed]:
                    _drop(current, tuple(err.absolute_path) + (key,))
            continue
        cut = _cut_for(current.data, tuple(errors[0].absolute_path), errors[0].validator == "required")
        if cut is None:
            return None
        _drop(current, cut)
    return None


def _cut_for(data: Any, path: tuple, required: bool) -> tuple | None:
    """What to cut for an error at ``path``: the field itself when the error is in its value (an endpoint keeps
    its place without its `weight: 0`; a field it cannot do without is then missing, and the next round cuts the
    item), else the innermost list item holding it (unless a field is missing outside any list: then its mapping
    would have to go, and that is the document)."""
    if not required and path and isinstance(path[-1], str):
        return path
    for i in range(len(path) - 1, -1, -1):
        if isinstance(path[i], int) and isinstance(_at(data, path[:i]), list):
            return path[: i + 1]
    if required or not path:
        return None
    return path


def _at(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def _drop(doc: Document, path: tuple) -> None:
    """Remove the node at ``path`` from ``doc.data`` and keep the source map in step (list items shift up)."""
    parent = _at(doc.data, path[:-1])
    last = path[-1]
    del parent[last]
    n = len(path)
    for table in (doc.values, doc.keys):
        moved: dict[tuple, Any] = {}
        for key, loc in table.items():
            if key[:n] == path:
                continue  # the cut node and everything under it
            if isinstance(last, int) and len(key) >= n and key[: n - 1] == path[:-1] and isinstance(key[n - 1], int) \
                    and key[n - 1] > last:
                key = key[: n - 1] + (key[n - 1] - 1,) + key[n:]
            moved[key] = loc
        table.clear()
        table.update(moved)
