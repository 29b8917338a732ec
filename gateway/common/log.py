"""Logging: structlog to stderr, as JSON lines or for a console, with credentials redacted.

``configure_logging`` is called once per process by the CLI or the runtime.
Whatever a module logs, values of keys that name credentials (``api_key``,
``x-gateway-apikey``, ``authorization``, ``password``, ``token``...) are
replaced before rendering: defence in depth behind the rule that no code logs
a key in the first place.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from .redaction import redact_url

LogFormat = Literal["json", "console", "auto"]
REDACTED = "[redacted]"
_SENSITIVE_KEY = re.compile(
    r"(api[-_]?key|apikey|x-gateway-apikey|authorization|password|passwd|secret|token|cookie)", re.IGNORECASE
)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# The stdlib logger websockets' protocol objects get (listener, upstream handshake, message relay, probes):
# websockets logs every open and close at INFO, which per connection is noise; warnings still show.
PROTOCOL_LOG = logging.getLogger("wsgate.wsproto")
PROTOCOL_LOG.setLevel(logging.WARNING)


_KEY_VERDICTS: dict[str, bool] = {}  # key -> names a credential; log keys are a small, fixed vocabulary


def _sensitive(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    verdict = _KEY_VERDICTS.get(key)
    if verdict is None:
        verdict = _SENSITIVE_KEY.search(key) is not None
        if len(_KEY_VERDICTS) < 4096:  # keys from data (header names) cannot grow it without bound
            _KEY_VERDICTS[key] = verdict
    return verdict


def _redact_value(key: Any, value: Any) -> Any:
    if _sensitive(key):
        return REDACTED
    if isinstance(value, str) and "@" in value and "://" in value:
        return redact_url(value)  # ws://user:password@host: no code should log one, and none is shown
    if isinstance(value, dict):
        return {k: _redact_value(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        # Header lists: [(name, value), ...]
        return type(value)((k, _redact_value(k, v)) for k, v in value)
    return value


def redact_credentials(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace the values of credential-named keys, nested mappings and header lists too."""
    for key, value in event_dict.items():  # values replaced in place: the dict's size does not change
        if key == "event":
            continue
        if _sensitive(key):
            event_dict[key] = REDACTED
        elif isinstance(value, (str, dict, list, tuple)):
            event_dict[key] = _redact_value(key, value)
    return event_dict


class WholeLines:
    """A stream that hands each complete line to ``target`` in one write.

    The workers of `wsgate run --workers N` and their supervisor share one
    stderr; ``print`` writes a line and its newline separately, which lets
    another process's line land in between. A whole line in one write (up to
    PIPE_BUF bytes) cannot be split.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            data = (done + "\n").encode(getattr(self.target, "encoding", None) or "utf-8", "backslashreplace")
            buffer = getattr(self.target, "buffer", None)
            if buffer is not None:
                self.target.flush()
                buffer.write(data)
                buffer.flush()
            else:
                self.target.write(data.decode())
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.target.write(self._pending)
            self._pending = ""
        self.target.flush()


def configure_logging(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Send structlog events to stderr; ``auto`` is console on a terminal, JSON otherwise."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_credentials,
            structlog.processors.StackInfoRenderer(),
            # The console renderer formats exceptions itself (and warns if they arrive pre-formatted).
            *(() if use_console else (structlog.processors.format_exc_info,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=WholeLines(sys.stderr)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
