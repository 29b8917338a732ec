"""Credentials as the gateway holds them: SHA-256 digests, never the keys or passwords themselves.

Two forms, for two audiences:

- a **digest** (``key_digest`` and the ``*_digest`` helpers) stands for the secret itself. It stays in the
  process: the identify policy matches with it and a reload revokes by it. An unsalted SHA-256 of a weak key or
  password is crackable offline, so no digest of a secret ever leaves the process.
- an **entry fingerprint** (:func:`entry_fingerprint`) stands for the configuration entry a connection
  matched, computed from that entry as git holds it: a ``sha256:`` form or a bcrypt/argon2 hash as written, an
  ``{env: NAME}`` entry by its variable *name* (never its value), a JWT client id, a certificate identifier.
  The admin's ``/connections`` shows it, and ``plan --from`` computes the same fingerprints from the desired
  tree to tell which live connections a change revokes. It reveals nothing the config in git does not hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from ..common.redaction import CREDENTIAL_PLACEHOLDER
from ..config.models import EnvKey

SHA256_PREFIX = "sha256:"
# Domain separation: a fingerprint is never the plain SHA-256 of anything a client sends or a file holds.
_FINGERPRINT_TAG = "wsgate-credential-entry-v1"


def key_digest(key: str) -> str:
    """The hex SHA-256 of a presented key: what the gateway compares and may log nothing of."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def configured_digest(entry: str | EnvKey, env: Mapping[str, str]) -> str | None:
    """The digest a configured key stands for (None: an env key whose variable is unset or empty)."""
    if isinstance(entry, EnvKey):
        value = env.get(entry.env)
        return key_digest(value) if value else None
    if entry.startswith(CREDENTIAL_PLACEHOLDER):
        return None  # an exported placeholder (redacted:...): no client may present it as a key
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


# ------------------------------------------------------------------ fingerprints of configuration entries


def entry_fingerprint(kind: str, entry: str) -> str:
    """The fingerprint of one configuration entry of ``kind`` (``api_key``, ``basic``, ``jwt``,
    ``certificate``), from the entry's git form as the functions below write it."""
    return hashlib.sha256(f"{_FINGERPRINT_TAG}\0{kind}\0{entry}".encode()).hexdigest()


def _stored_form(entry: str | EnvKey) -> str:
    """A key or fast-hashed password entry as git holds it: ``env:NAME`` for an environment entry (the name,
    never the value), else ``sha256:<hex>``: a plain-text entry and its ``sha256:`` form are one entry (the
    reload keeps a connection when a key moves from one to the other, so the fingerprint must not change)."""
    if isinstance(entry, EnvKey):
        return f"env:{entry.env}"
    if entry.startswith(SHA256_PREFIX):
        return SHA256_PREFIX + entry[len(SHA256_PREFIX):].lower()
    return SHA256_PREFIX + key_digest(entry)  # the key is in the file in plain text (WSG200) already


def api_key_fingerprint(entry: str | EnvKey) -> str:
    return entry_fingerprint("api_key", _stored_form(entry))


def basic_fingerprint(username: str, password: str | EnvKey, slow: bool) -> str:
    """A basic user's entry: the user name and the password's stored form (a bcrypt/argon2 hash as written:
    checking a guess against it costs what the hash costs)."""
    stored = password if slow and isinstance(password, str) else _stored_form(password)
    return entry_fingerprint("basic", f"{username}\0{stored}")


def jwt_client_fingerprint(client: str) -> str:
    return entry_fingerprint("jwt", client)


def certificate_fingerprint(key: str) -> str:
    return entry_fingerprint("certificate", key)
