"""The application index: who an upgrade comes from, and which APIs they may use."""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..common.build_counts import count
from ..config.tree import Config
from .credentials import (
    api_key_fingerprint,
    basic_digest,
    basic_fingerprint,
    certificate_digest,
    certificate_fingerprint,
    configured_digest,
    jwt_client_digest,
    jwt_client_fingerprint,
    key_digest,
)
from .hashes import VerifiedCache, dummy_hash, slow_hash_kind, verify_slow_hash

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _normal_host(name: str) -> str:
    return name.strip().rstrip(".").lower()


@dataclass(frozen=True)
class AppIndex:
    """Built once per config; read on every upgrade."""

    # A dict keyed by the digest is safe to probe: any timing difference reveals
    # something about the attacker's own digest, not about a stored key. The
    # match is then confirmed with compare_digest all the same.
    keys: Mapping[str, str] = field(default_factory=dict)  # digest -> app
    networks: tuple[tuple[Network, str], ...] = ()
    hostnames: Mapping[str, str] = field(default_factory=dict)
    registrations: Mapping[str, frozenset[str]] = field(default_factory=dict)  # app -> APIs
    digests: Mapping[str, frozenset[str]] = field(default_factory=dict)  # app -> key digests
    jwt_clients: Mapping[str, str] = field(default_factory=dict)  # client id -> app
    basic_users: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # username -> (password digest, app)
    # app -> digests of its basic users and JWT clients: what reload compares to revoke connections.
    credential_digests: Mapping[str, frozenset[str]] = field(default_factory=dict)
    verifiers: Mapping[str, Any] = field(default_factory=dict)  # API -> jwt_keys.JWTVerifier of its identify policy
    certificates: Mapping[str, str] = field(default_factory=dict)  # CertificateIdentifier.key() -> app
    verified: VerifiedCache = field(default_factory=VerifiedCache)  # recent bcrypt/argon2 successes
    # What leaves the process instead of a digest (gateway/build/credentials.py): the fingerprint of the configuration
    # entry each credential digest came from, and app -> the fingerprints of all its entries (`{env: ...}` ones
    # whether their variable is set or not: plan --from decides with them on a machine without those variables).
    entries: Mapping[str, str] = field(default_factory=dict)  # credential digest -> entry fingerprint
    fingerprints: Mapping[str, frozenset[str]] = field(default_factory=dict)  # app -> entry fingerprints
    # Once any basic password is a bcrypt/argon2 hash, every basic check costs one verification of that cost:
    # an unknown user, or one whose password is a fast digest, is verified against this hash (no password
    # matches it), so timing tells no user names.
    dummy_hash: str | None = None

    @classmethod
    def build(cls, config: Config, env: Mapping[str, str] | None = None) -> AppIndex:
        count("app_index")
        env = os.environ if env is None else env
        keys: dict[str, str] = {}
        networks: list[tuple[Network, str]] = []
        hostnames: dict[str, str] = {}
        registrations: dict[str, frozenset[str]] = {}
        digests: dict[str, frozenset[str]] = {}
        jwt_clients: dict[str, str] = {}
        basic_users: dict[str, tuple[str, str]] = {}
        credential_digests: dict[str, frozenset[str]] = {}
        certificates: dict[str, str] = {}
        entries: dict[str, str] = {}
        fingerprints: dict[str, frozenset[str]] = {}
        for name, loaded in config.applications.items():
            app = loaded.model
            mine = set()
            printed: set[str] = set()
            for entry in app.identifiers.api_keys:
                digest = configured_digest(entry, env)
                printed.add(api_key_fingerprint(entry))
                if digest is not None:
                    keys.setdefault(digest, name)  # a key claimed twice is a config error; first wins
                    entries.setdefault(digest, api_key_fingerprint(entry))
                    mine.add(digest)
            digests[name] = frozenset(mine)
            for ip in app.identifiers.ips:
                try:
                    networks.append((ipaddress.ip_network(ip, strict=False), name))
                except ValueError:
                    continue  # the checker reports it
            for host in app.identifiers.hostnames:
                hostnames.setdefault(_normal_host(host), name)
            registrations[name] = frozenset(app.apis)
            others: set[str] = set()
            for client in app.identifiers.jwt_clients:
                jwt_clients.setdefault(client, name)  # claimed twice is a config error; first wins
                others.add(jwt_client_digest(client))
                entries.setdefault(jwt_client_digest(client), jwt_client_fingerprint(client))
                printed.add(jwt_client_fingerprint(client))
            for user in app.identifiers.basic:
                # A bcrypt/argon2 hash is kept as written (it starts with `$`, a hex digest never does).
                written = user.password
                slow = isinstance(written, str) and slow_hash_kind(written) is not None
                password = written if isinstance(written, str) and slow else configured_digest(written, env)
                printed.add(basic_fingerprint(user.username, written, slow))
                if password is not None and user.username not in basic_users:
                    basic_users[user.username] = (password, name)
                    others.add(basic_digest(user.username, password))
                    entries.setdefault(basic_digest(user.username, password),
                                       basic_fingerprint(user.username, written, slow))
            for identifier in app.identifiers.certificates:
                certificates.setdefault(identifier.key(), name)  # claimed twice is a config error; first wins
                others.add(certificate_digest(identifier.key()))
                entries.setdefault(certificate_digest(identifier.key()), certificate_fingerprint(identifier.key()))
                printed.add(certificate_fingerprint(identifier.key()))
            credential_digests[name] = frozenset(others)
            fingerprints[name] = frozenset(printed)
        # Most specific network first, so a /32 beats the /8 that contains it.
        networks.sort(key=lambda item: item[0].prefixlen, reverse=True)
        return cls(keys, tuple(networks), hostnames, registrations, digests, jwt_clients, basic_users,
                   credential_digests, _verifiers(config, env), certificates, entries=entries,
                   fingerprints=fingerprints,
                   dummy_hash=dummy_hash([password for password, _ in basic_users.values()]))

    def by_api_key(self, presented: str) -> str | None:
        digest = key_digest(presented)
        app = self.keys.get(digest)
        if app is None:
            return None
        return app if any(hmac.compare_digest(digest, d) for d in self.digests.get(app, ())) else None

    def by_ip(self, ip: str) -> str | None:
        """The application of the most specific network holding ``ip``."""
        return next(self._ip_owners(ip), None)

    def ip_names(self, ip: str, app: str) -> bool:
        """Whether one of ``app``'s own networks holds ``ip`` (whatever other applications claim it too)."""
        return app in self._ip_owners(ip)

    def _ip_owners(self, ip: str) -> Iterator[str]:
        """The applications whose networks hold ``ip``, most specific network first (lazily: by_ip stops at one)."""
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for network, app in self.networks:
            if address.version == network.version and address in network:
                yield app

    def by_hostname(self, hostname: str) -> str | None:
        return self.hostnames.get(_normal_host(hostname))

    def is_registered(self, app: str, api: str) -> bool:
        return api in self.registrations.get(app, ())

    def key_digests(self, app: str) -> frozenset[str]:
        return self.digests.get(app, frozenset())

    def entry_fingerprint(self, digest: str) -> str | None:
        """The fingerprint of the configuration entry a matched credential's digest came from (what the admin
        shows of it; the digest itself stays in the process)."""
        return self.entries.get(digest)

    def by_jwt_client(self, client: str) -> str | None:
        return self.jwt_clients.get(client)

    def by_basic(self, username: str, password: str) -> tuple[str, str] | None:
        """(app, credential digest) for a matching user and password, else None.

        An unknown user costs the same digest and comparison as a wrong
        password, so timing does not tell which user names exist.
        """
        presented = key_digest(password)
        stored, app = self.basic_users.get(username, (_NO_PASSWORD, ""))
        if self.basic_check_is_slow(username):  # only by_basic_slow (in a thread) or the cache may say yes
            return self.basic_cached(username, password)
        if hmac.compare_digest(presented, stored) and app:
            return app, basic_digest(username, stored)
        return None

    def by_certificate(self, keys: list[str]) -> tuple[str, str] | None:
        """(app, credential digest) for the first of a certificate's identifier forms that an application claims."""
        for key in keys:
            app = self.certificates.get(key)
            if app is not None:
                return app, certificate_digest(key)
        return None

    def basic_check_is_slow(self, username: str) -> bool:
        """Whether checking ``username`` costs a bcrypt/argon2 verification (run :meth:`by_basic_slow` in a
        thread): for every user name, known or not, once any basic password is such a hash."""
        return self.dummy_hash is not None or self.basic_users.get(username, (_NO_PASSWORD, ""))[0].startswith("$")

    def basic_cached(self, username: str, password: str) -> tuple[str, str] | None:
        """A user whose password was verified within the cache's lifetime (cheap: on the loop)."""
        stored, app = self.basic_users.get(username, (_NO_PASSWORD, ""))
        if app and self.verified.hit(VerifiedCache.key(username, password, stored), time.monotonic()):
            return app, basic_digest(username, stored)
        return None

    def by_basic_slow(self, username: str, password: str) -> tuple[str, str] | None:
        """Like :meth:`by_basic` when :meth:`basic_check_is_slow`: blocking for ~0.1-1 s, so run it in a thread.

        Exactly one slow verification whoever asks: a bcrypt/argon2 user's own hash; for an unknown user or
        one whose password is a fast digest, :attr:`dummy_hash` (its answer ignored), then the digest compare.
        """
        stored, app = self.basic_users.get(username, (_NO_PASSWORD, ""))
        if stored.startswith("$"):
            matched = verify_slow_hash(stored, password)
        else:
            if self.dummy_hash is not None:
                verify_slow_hash(self.dummy_hash, password)
            matched = hmac.compare_digest(key_digest(password), stored)
        return (app, basic_digest(username, stored)) if matched and app else None

    def remember_basic(self, username: str, password: str) -> None:
        """Cache a successful :meth:`by_basic_slow` (called on the loop, after it)."""
        stored, _ = self.basic_users.get(username, (_NO_PASSWORD, ""))
        self.verified.add(VerifiedCache.key(username, password, stored), time.monotonic())

    def verifier(self, api: str) -> Any:
        """The JWT verifier of ``api``'s identify policy (None if it has no `jwt:` block)."""
        return self.verifiers.get(api)


# Compared against when the user is unknown: no password hashes to it (not 64 hex digits).
_NO_PASSWORD = "-" * 64


def _verifiers(config: Config, env: Mapping[str, str]) -> dict[str, Any]:
    """One JWT verifier per API whose identify policy has a `jwt:` block; key files are read here, once."""
    out: dict[str, Any] = {}
    for name, loaded in config.apis.items():
        for spec in loaded.model.policies:
            if spec.type == "identify" and spec.jwt is not None:
                from .jwt_keys import JWTVerifier  # PyJWT is loaded only by configs that use it

                out[name] = JWTVerifier.build(spec.jwt, loaded.base_dir, env)
    return out
