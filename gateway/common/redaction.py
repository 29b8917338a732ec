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
# What `/config` and `wsgate export config` write for a credential the config holds (a key, a basic password):
# "redacted:" and a fingerprint prefix. It stands for no key: the credential index never accepts it.
CREDENTIAL_PLACEHOLDER = "redacted:"
REDACTED_USERINFO = "***"  # stands for a URL's password (or a user name that may be a token)

# A query parameter whose name, lower-cased and stripped of everything but letters and digits, contains one of
# these is a credential for the log, whatever separator, case, `+` or percent-encoding the client used.
_CREDENTIAL_NAME_PARTS = ("apikey", "accesstoken", "token", "secret", "password", "passwd", "auth", "key")
# The parameters the gateway itself consumes, in the same normalised form: never forwarded upstream.
_GATEWAY_CREDENTIALS = ("gatewayapikey", "accesstoken")
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def _normalised_name(part: str) -> str:
    name = part.partition("=")[0]
    for _ in range(3):  # %2578 is "%78" once decoded and "x" twice: decode until it stops changing
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    return _NOT_ALNUM.sub("", name.lower())


def _named_like(part: str, fragments: tuple[str, ...]) -> bool:
    name = _normalised_name(part)
    return any(fragment in name for fragment in fragments)


def credential_like(name_part: str) -> bool:
    """Whether a query parameter (``name=value`` or a bare name) is named like a credential."""
    return _named_like(name_part, _CREDENTIAL_NAME_PARTS)


def api_key_like(name: str) -> bool:
    """Whether a header name is the gateway's API key header in another spelling (``X_Gateway_APIKey``, which
    some servers read as ``X-Gateway-APIKey``)."""
    return "gatewayapikey" in _normalised_name(name)


def drop_credential_parts(query: str, fragments: tuple[str, ...]) -> str:
    """``query`` minus every part that could belong to a parameter named like a credential: its name,
    normalised as ``_normalised_name`` does, contains one of ``fragments``.

    The gateway reads a key with ``parse_qs``, which splits on ``&`` only; an
    upstream or a log reader may split on ``;`` too. So within an
    ``&``-separated segment, everything from the first ``;``-piece named like a
    credential to the segment's end goes (``k;=KEY``, ``k=AB;CD``: to the
    gateway's parser that is all one value), and the pieces before it stay
    (``a=1;k=KEY`` keeps ``a=1``). A credential written without its value
    attached (``k&=KEY``, ``k=&KEY``, ``k=AB&CD``) takes the segments after it
    that have no name of their own (no ``=``, or nothing alphanumeric before
    it) with it. What is kept is verbatim, with the client's separators.
    """
    if not query:
        return query
    if "%" not in query:
        # Without escapes no name can hide a fragment, and no fragment anywhere means none in a name: the
        # common query costs one pass instead of one per parameter.
        flat = _NOT_ALNUM.sub("", query.lower())
        if not any(fragment in flat for fragment in fragments):
            return query
    kept: list[str] = []
    dropping = False  # the last segment ended in a credential: nameless segments after it may be its value
    for segment in query.split("&"):
        if dropping and _nameless(segment.split(";", 1)[0]):
            continue
        pieces = segment.split(";")
        for index, piece in enumerate(pieces):
            if _named_like(piece, fragments):
                dropping = True
                if index:
                    kept.append(";".join(pieces[:index]))
                break
        else:
            dropping = False
            kept.append(segment)
    return "&".join(kept)


def _nameless(piece: str) -> bool:
    return "=" not in piece or not _normalised_name(piece)


def redact_query(query: str) -> str:
    """``query`` minus every part that could belong to a parameter named like a credential
    (see :func:`drop_credential_parts`).

    What log-invocation stores and the log shows: a key sent in a form the
    identify policy does not read (``;`` separators, odd case, ``+``, percent
    escapes, a stray ``&``) is still a key, and is dropped with its value.
    """
    return drop_credential_parts(query, _CREDENTIAL_NAME_PARTS)


def forwarded_query(query: str) -> str:
    """``query`` as the upstream gets it: minus every part that could belong to a credential the gateway
    consumes, in any spelling (its API key ``x-Gateway-APIKey``, an RFC 6750 ``access_token``); the upstream's
    own parameters, credential-like or not, are kept verbatim."""
    return drop_credential_parts(query, _GATEWAY_CREDENTIALS)


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


def has_userinfo(url: str) -> bool:
    """Whether ``url`` carries ``user[:password]@`` before its host."""
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return "@" in url.split("//", 1)[-1].split("/", 1)[0]


def redact_urls(value: Any) -> Any:
    """``value`` (JSON-like) with the userinfo of every URL string in it redacted: what plan and admin show."""
    if isinstance(value, str):
        return redact_url(value) if "@" in value else value
    if isinstance(value, list):
        return [redact_urls(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_urls(v) for k, v in value.items()}
    return value
