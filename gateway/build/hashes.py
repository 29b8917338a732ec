"""Slow password hashes for HTTP Basic users: bcrypt (``$2b$...``) and argon2 (``$argon2id$...``).

What belongs in git instead of a password or its SHA-256. Verifying one takes ~0.1-1 s of CPU by design: the
identify policy runs it in a thread and remembers successes briefly (:class:`VerifiedCache`). The libraries
come with the ``wsgate[hashes]`` extra and are imported only when a hash of theirs is checked.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
import secrets
from collections import Counter
from collections.abc import Iterable

_BCRYPT = re.compile(r"^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$")
_ARGON2 = re.compile(r"^\$argon2(id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$")
HASHES_EXTRA = "pip install 'wsgate[hashes]'"


def slow_hash_kind(text: str) -> str | None:
    """``bcrypt`` or ``argon2`` for a password written as such a hash (well formed or not), else None."""
    if text.startswith(("$2a$", "$2b$", "$2y$")):
        return "bcrypt"
    if text.startswith("$argon2"):
        return "argon2"
    return None


def slow_hash_problem(text: str) -> tuple[str, str] | None:
    """(problem, hint) if ``text`` is a bcrypt/argon2 hash the gateway cannot use, else None."""
    kind = slow_hash_kind(text)
    if kind is None:
        return None
    if not (_BCRYPT if kind == "bcrypt" else _ARGON2).match(text):
        return f"malformed {kind} hash", f"paste the whole hash as `{kind}` printed it (it starts with `$`)"
    module = "bcrypt" if kind == "bcrypt" else "argon2"
    if importlib.util.find_spec(module) is None:
        return f"{kind} hashes need the `{module}` package", f"install it: {HASHES_EXTRA}"
    return None


def verify_slow_hash(stored: str, password: str) -> bool:
    """Whether ``password`` matches a bcrypt or argon2 hash. Slow on purpose: never call it on the event loop."""
    if slow_hash_kind(stored) == "bcrypt":
        import bcrypt

        try:
            return bool(bcrypt.checkpw(password.encode("utf-8"), stored.encode("ascii")))
        except ValueError:
            return False
    from argon2 import PasswordHasher
    from argon2.exceptions import Argon2Error, InvalidHashError

    try:
        return bool(PasswordHasher().verify(stored, password))
    except (Argon2Error, InvalidHashError):
        return False


def cost_of(stored: str) -> str:
    """The scheme and cost part of a bcrypt/argon2 hash (``$2b$12$``, ``$argon2id$v=19$m=65536,t=3,p=4$``):
    what a verification against it costs, without its salt and digest."""
    if slow_hash_kind(stored) == "bcrypt":
        return stored[:7]
    return stored.rsplit("$", 2)[0] + "$"


_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def dummy_hash(stored: Iterable[str]) -> str | None:
    """A hash no password matches (random salt and digest) of the scheme and cost most of ``stored`` use: what
    an unknown user's password is verified against, so that costs what a known user's does. None if
    ``stored`` holds no bcrypt/argon2 hash."""
    hashes = [h for h in stored if slow_hash_kind(h) is not None]
    if not hashes:
        return None
    cost = Counter(cost_of(h) for h in hashes).most_common(1)[0][0]
    like = next(h for h in hashes if cost_of(h) == cost)
    if cost.startswith("$2"):
        # bcrypt's salt is 22 characters whose last one carries 2 unused bits: gensalt writes a canonical one
        # (cheap: no hashing), then 31 characters of digest.
        import bcrypt

        salt = bcrypt.gensalt(int(cost[4:6]), prefix=b"2a" if cost.startswith("$2a") else b"2b").decode()
        return salt + "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31))

    def random_b64(like_part: str) -> str:  # the same decoded length as the configured hash's part
        return base64.b64encode(secrets.token_bytes(len(like_part) * 3 // 4)).decode().rstrip("=")

    salt, digest = like.rsplit("$", 2)[1:]
    return f"{cost}{random_b64(salt)}${random_b64(digest)}"


class VerifiedCache:
    """Recent successful slow-hash verifications, keyed by a fast hash of (user, password, stored hash).

    A reconnect storm of one client then costs one slow verification, not one per connection. Only
    successes are kept, for ``ttl`` seconds, at most ``size`` of them; a changed password (a new stored hash)
    never matches an old entry. The keys are SHA-256 digests: the cache holds no password.
    """

    def __init__(self, ttl: float = 60.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, float] = {}

    @staticmethod
    def key(username: str, password: str, stored: str) -> str:
        return hashlib.sha256(f"{username}\0{password}\0{stored}".encode()).hexdigest()

    def hit(self, key: str, now: float) -> bool:
        expires = self._entries.get(key)
        if expires is None:
            return False
        if expires < now:
            del self._entries[key]
            return False
        return True

    def add(self, key: str, now: float) -> None:
        if len(self._entries) >= self.size:
            for old in [k for k, expires in self._entries.items() if expires < now] or list(self._entries)[:1]:
                del self._entries[old]
        self._entries[key] = now + self.ttl
