"""Credentials as the gateway holds them: SHA-256 digests, never the keys or passwords themselves."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from .config.models import EnvKey

SHA256_PREFIX = "sha256:"


def key_digest(key: str) -> str:
    """The hex SHA-256 of a presented key: what the gateway compares and may log nothing of."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def configured_digest(entry: str | EnvKey, env: Mapping[str, str]) -> str | None:
    """The digest a configured key stands for (None: an env key whose variable is unset or empty)."""
    if isinstance(entry, EnvKey):
        value = env.get(entry.env)
        return key_digest(value) if value else None
    if entry.startswith(SHA256_PREFIX):
        return entry[len(SHA256_PREFIX):].lower()
    return key_digest(entry)


def basic_digest(username: str, password_digest: str) -> str:
    """What a connection identified by HTTP Basic is remembered by (revoked when user or password changes)."""
    return key_digest(f"basic\0{username}\0{password_digest}")


def jwt_client_digest(client: str) -> str:
    """What a connection identified by a JWT is remembered by (revoked when the client id is unregistered)."""
    return key_digest(f"jwt\0{client}")


def certificate_digest(key: str) -> str:
    """What a connection identified by a client certificate is remembered by (revoked when the identifier goes)."""
    return key_digest(f"certificate\0{key}")
