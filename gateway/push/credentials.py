"""Which backend a push request comes from: its bearer key against the API's ``push.credentials``.

A credential reaches the connections of the API that declares it and no
other, so the check takes the API named in the request's path. Keys are
compared as SHA-256 digests in constant time; ``{env: ...}`` keys are read
from the environment given, an unset one matching nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from ..config.models import APIPush, EnvKey


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def credential_for(push: APIPush, presented: str, env: Mapping[str, str]) -> str | None:
    """The name of the credential ``presented`` matches, or None."""
    if not presented:
        return None
    digest = _digest(presented)
    found: str | None = None
    for credential in push.credentials:
        key = credential.key
        if isinstance(key, EnvKey):
            value = env.get(key.env)
            if not value:
                continue
            expected = _digest(value)
        elif key.startswith("sha256:"):
            expected = key[len("sha256:"):]
        else:
            expected = _digest(key)
        # Every credential is compared (no early return): the time taken says nothing about which matched.
        if hmac.compare_digest(digest, expected) and found is None:
            found = credential.name
    return found


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header ('' without one)."""
    if not header:
        return ""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
