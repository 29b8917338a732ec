"""One YAML document as plain data, with where each of its nodes was written: what loading a file yields.

Its own module because both the loader (``source.py``) and the check cache
(``cache.py``, which the loader fills) hold documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tree import Location

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
