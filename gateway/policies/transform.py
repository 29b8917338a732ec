"""Transform policy: operator code rewrites or drops messages at one stage."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from ..config.models import TransformPolicy
from .base import DROP, Close, ConnectionContext, Direction, Message, MessageDecision, Policy, PolicyBuild

log = structlog.get_logger("wsgate.policies")


class TransformContext(NamedTuple):
    """What a transform callable receives for each message (immutable).

    Return the new payload (``str`` for text, ``bytes`` for binary; returning
    the other type changes the message type), or ``gateway.DROP`` to swallow it.

    A named tuple rather than a frozen dataclass: one is made per message, and
    a tuple costs a seventh of the dataclass's construction.
    """

    direction: Direction  # "client": client -> native server; "server": the other way
    is_text: bool
    payload: str | bytes
    api: str
    application: str | None
    connection_id: str
    metadata: dict[str, Any] = {}  # noqa: RUF012  # never mutated: the relay always passes the connection's


_new_context = tuple.__new__  # the positional constructor without NamedTuple's keyword handling


def load_callable(spec: str, search_paths: Sequence[Path]) -> Callable[..., Any]:
    """Import ``package.module:function`` with ``search_paths`` tried first on sys.path."""
    module_name, _, attr_path = spec.partition(":")
    added = [str(p) for p in search_paths if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        target: Any = importlib.import_module(module_name)
        target = _fresh(target, search_paths)
    finally:
        for p in added:
            sys.path.remove(p)
    for part in attr_path.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{spec} is not callable")
    return target


_imported_sources: dict[str, str] = {}  # module name -> SHA-256 of the source it was (re)loaded from


def _fresh(module: Any, search_paths: Sequence[Path]) -> Any:
    """The module, re-imported when it lives under ``search_paths`` (operator code in the config tree) and its
    source changed since it was loaded: a reload applies edited transforms. Connections already relayed keep
    the function they started with."""
    file = getattr(module, "__file__", None)
    if not file:
        return module
    path = Path(file).resolve()
    if not any(path.is_relative_to(base) for base in search_paths):
        return module
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return module
    known = _imported_sources.get(module.__name__)
    _imported_sources[module.__name__] = digest
    if known is not None and known != digest:
        module = importlib.reload(module)
    return module


class Transform(Policy):
    """Calls the operator's function for each message of its stage; ``on_error`` decides on exceptions."""

    type = "transform"

    def __init__(self, spec: TransformPolicy, build: PolicyBuild) -> None:
        self.spec = spec
        self.api = build.api_name
        self.function = function = load_callable(spec.callable, build.search_paths)
        self.message_stages = frozenset({spec.stage})
        self._is_async = inspect.iscoroutinefunction(function)
        self.sync_messages = not self._is_async  # decided once: the relay skips its per-message awaitable check
        self._text_only = spec.messages == "text"
        self._binary_only = spec.messages == "binary"

    def on_message(self, message: Message, conn: ConnectionContext) -> MessageDecision | Awaitable[MessageDecision]:
        if (self._text_only and not message.is_text) or (self._binary_only and message.is_text):
            return message
        application = conn.application
        context = _new_context(TransformContext, (message.direction, message.is_text, message.payload, self.api,
                                                  application.name if application else None, conn.id, conn.metadata))
        if self._is_async:
            return self._call_async(context, message, conn)
        try:
            result = self.function(context)
        except Exception as exc:
            return self._failed(message, conn, exc)
        return self._decide(result, message, conn)

    async def _call_async(self, context: TransformContext, message: Message,
                          conn: ConnectionContext) -> MessageDecision:
        try:
            result = await self.function(context)
        except Exception as exc:
            return self._failed(message, conn, exc)
        return self._decide(result, message, conn)

    def _decide(self, result: Any, message: Message, conn: ConnectionContext) -> MessageDecision:
        if result is DROP:
            return DROP
        if isinstance(result, str):
            return Message(message.direction, True, result)
        if isinstance(result, (bytes, bytearray, memoryview)):
            return Message(message.direction, False, bytes(result))
        return self._failed(message, conn, TypeError(
            f"transform returned {type(result).__name__}; return str, bytes or gateway.DROP"))

    def _failed(self, message: Message, conn: ConnectionContext, exc: Exception) -> MessageDecision:
        # The payload is never logged: it may carry personal data.
        log.error("transform_failed", api=self.api, policy=self.type, callable=self.spec.callable,
                  connection=conn.id, on_error=self.spec.on_error, error=f"{type(exc).__name__}: {exc}")
        if self.spec.on_error == "pass":
            return message
        if self.spec.on_error == "drop":
            return DROP
        return Close(1011, "transform failed")
