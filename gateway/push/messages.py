"""What the push API asks of the process holding a connection, and what it answers: typed, and as JSON.

The same requests run locally (``PushHub.handle``), through Redis to
another instance or worker (``cluster.py``) and through a supervisor to a
sibling worker (``forward.py``); only the transport differs. Payloads travel
base64-encoded in JSON (binary messages survive, text is re-decoded at the
owner).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Send:
    """A message to one connection."""

    api: str
    connection: str
    is_text: bool
    data: bytes
    op: str = field(default="send", init=False)


@dataclass(frozen=True, slots=True)
class CloseOne:
    """Close one connection with a code and reason."""

    api: str
    connection: str
    code: int = 1000
    reason: str = ""
    op: str = field(default="close", init=False)


@dataclass(frozen=True, slots=True)
class Describe:
    """What one connection is: API, application, since when, counts, groups."""

    api: str
    connection: str
    op: str = field(default="get", init=False)


@dataclass(frozen=True, slots=True)
class Join:
    """Add one connection to a group (``leave``: remove it)."""

    api: str
    connection: str
    group: str
    leave: bool = False
    op: str = field(default="join", init=False)


@dataclass(frozen=True, slots=True)
class Publish:
    """A message to every member of a group of an API on this process (``group`` None: every connection of it).

    ``origin``: the owner key of the process that took the request; it delivered its own members already.
    """

    api: str
    group: str | None
    is_text: bool
    data: bytes
    origin: str = ""
    op: str = field(default="publish", init=False)


Request = Send | CloseOne | Describe | Join
"""A request for one connection: answered by its owner."""

_KINDS: dict[str, type[Any]] = {"send": Send, "close": CloseOne, "get": Describe, "join": Join, "publish": Publish}


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP status and a short JSON body (``error`` and ``reason`` on failures, as every refusal has)."""

    status: int
    body: dict[str, Any]

    @classmethod
    def error(cls, status: int, error: str, reason: str, **extra: Any) -> Reply:
        return cls(status, {"error": error, "reason": reason, **extra})

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "body": self.body}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reply:
        return cls(int(data["status"]), dict(data["body"]))


NOT_FOUND = Reply.error(404, "not_found", "no such connection on this API")


def encode(message: Request | Publish) -> dict[str, Any]:
    """A JSON-ready dict (``data`` base64)."""
    out = asdict(message)
    if "data" in out:
        out["data"] = base64.b64encode(out["data"]).decode("ascii")
    return out


def decode(data: dict[str, Any]) -> Request | Publish:
    """The inverse of :func:`encode`; raises ValueError/KeyError/TypeError on anything else."""
    kind = _KINDS[data["op"]]
    fields = {k: v for k, v in data.items() if k != "op"}
    if "data" in fields:
        fields["data"] = base64.b64decode(fields["data"])
    message: Request | Publish = kind(**fields)
    return message


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))
