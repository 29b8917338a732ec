"""What a credential looks like in text the gateway shows, and how it is cut out.

Three places the gateway shows text that a client or an operator wrote, and
may hold a secret: a request's query string (stored by log-invocation, logged),
an upstream URL (``ws://user:pass@host/``: plan, admin ``/config``, logs) and a
config value under a credential-bearing field (diagnostics; see
``gateway.config.diagnostics``). This module holds the first two; it imports
nothing but the standard library so the listener can use it per upgrade.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "[redacted]"
REDACTED_USERINFO = "***"  # stands for a URL's password (or a user name that may be a token)

# A query parameter whose name, lower-cased and stripped of everything but letters and digits, contains one of
# these is a credential for the log, whatever separator, case, `+` or percent-encoding the client used.
_CREDENTIAL_NAME_PARTS = ("apikey", "accesstoken", "token", "secret", "password", "passwd", "auth", "key")
_SEPARATORS = re.compile(r"([&;])")
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def _normalised_name(part: str) -> str:
    name = part.partition("=")[0]
    for _ in range(3):  # %2578 is "%78" once decoded and "x" twice: decode until it stops changing
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    return _NOT_ALNUM.sub("", name.lower())


def credential_like(name_part: str) -> bool:
    """Whether a query parameter (``name=value`` or a bare name) is named like a credential."""
    name = _normalised_name(name_part)
    return any(fragment in name for fragment in _CREDENTIAL_NAME_PARTS)


def redact_query(query: str) -> str:
    """``query`` minus every parameter named like a credential (both `&` and `;` separate parameters).

    What log-invocation stores and the log shows: a key sent in a form the
    identify policy does not read (``;`` separators, odd case, ``+``, percent
    escapes) is still a key, and is dropped with its value.
    """
    if not query:
        return query
    pieces = _SEPARATORS.split(query)
    kept: list[str] = []
    for index in range(0, len(pieces), 2):
        part = pieces[index]
        if credential_like(part):
            continue
        if kept:
            kept.append(pieces[index - 1])  # the separator before it, as the client wrote it
        kept.append(part)
    return "".join(kept)


def redact_url(url: str) -> str:
    """``url`` with its password shown as ``***`` (``user:***@host``), or its whole userinfo when it has no
    password (``***@host``: a token written as the user name); other URLs unchanged. Idempotent."""
    if "@" not in url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return re.sub(r"//[^/?#]*@", f"//{REDACTED_USERINFO}@", url)
    if "@" not in netloc:
        return url
    userinfo, _, host = netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{REDACTED_USERINFO}" if colon else REDACTED_USERINFO
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


def redact_urls(value: Any) -> Any:
    """``value`` (JSON-like) with the userinfo of every URL string in it redacted: what plan and admin show."""
    if isinstance(value, str):
        return redact_url(value) if "@" in value else value
    if isinstance(value, list):
        return [redact_urls(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_urls(v) for k, v in value.items()}
    return value
