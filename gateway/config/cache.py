"""What one check learned about each file, kept for the next check of the same tree (issue 17).

A running gateway checks its whole tree on every reload. With a :class:`CheckCache`
(the runtime keeps one), a file whose path and SHA-256 are those of the previous
check is neither parsed nor checked again: its documents, the problems found
while reading it and each document's own verdict (kind, JSON Schema, model) are
reused. A file that changed is parsed and its documents checked; a removed
file is forgotten.

What is never reused: the cross-resource rules (a change in one file can break
a reference in another, and rules read the environment and the files a
resource names) and the build of the config (it fingerprints the referenced
files again). Both run on every check, over the whole tree.

The cache keeps each file's documents with their source maps: about 8 KiB per
document, so ~16 MiB for 1,000 APIs and 1,000 applications. ``parsed`` and
``checked`` count the work of the last check, which is what tests assert.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .diagnostics import Diagnostic
    from .document import Document

V = TypeVar("V")


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@dataclass
class FileResult:
    """One file as read: its documents, the problems found reading it, its lines (for quoting)."""

    digest: str
    documents: list[Document]
    diagnostics: list[Diagnostic]
    lines: list[str]
    verdicts: dict[int, Any] = field(default_factory=dict)  # id(document) -> its verdict; the documents hold the ids
    ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        self.ids = frozenset(id(d) for d in self.documents)


class CheckCache:
    """Files read and documents checked by the last check, by path and content digest; see the module docstring."""

    def __init__(self) -> None:
        self._files: dict[str, FileResult] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # one check at a time uses a cache (checks run in worker threads)
        self.parsed = 0  # files parsed by the last check
        self.checked = 0  # documents checked by the last check

    def begin(self) -> None:
        """Start a check: counters to zero; files the check does not read are dropped at ``end``."""
        self._lock.acquire()
        self._seen = set()
        self.parsed = 0
        self.checked = 0

    def end(self) -> None:
        for name in set(self._files) - self._seen:
            del self._files[name]
        self._lock.release()

    def file(self, name: str, file_digest: str) -> FileResult | None:
        """The stored result of ``name`` if its content is still ``file_digest``."""
        self._seen.add(name)
        stored = self._files.get(name)
        return stored if stored is not None and stored.digest == file_digest else None

    def store(self, name: str, result: FileResult) -> None:
        self._seen.add(name)
        self._files[name] = result
        self.parsed += 1

    def verdict(self, doc: Document, compute: Callable[[Document], V]) -> V:
        """``compute(doc)``, or what it returned when this very document was checked before."""
        stored = self._files.get(doc.file)
        key = id(doc)
        if stored is None or key not in stored.ids:  # not a document this cache read
            self.checked += 1
            return compute(doc)
        if key not in stored.verdicts:
            self.checked += 1
            stored.verdicts[key] = compute(doc)
        result: V = stored.verdicts[key]
        return result
