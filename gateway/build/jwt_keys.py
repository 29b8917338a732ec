"""JWT bearer tokens: key material loaded once per config, and the per-upgrade verification.

Validation is PyJWT's (signature, ``exp``/``nbf``/``iat`` with leeway,
``iss``, ``aud``); this module only decides which keys and algorithms it may
use. Two rules keep algorithm confusion out:

- every key is bound to the algorithms of its own type at load time (an RSA
  key never verifies an HS256 token, whatever the token's header says), and
- HMAC and public-key algorithms are never allowed together (the config rules
  refuse it; ``build`` refuses it again).

Nothing here logs or returns a token; a :class:`TokenError` carries a short
reason meant for the client ("expired", "wrong audience").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..common.build_counts import count
from ..config.models import JWTSettings

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# Which algorithms a key of each type may verify.
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_BY_CURVE = {"secp256r1": frozenset({"ES256"}), "secp384r1": frozenset({"ES384"}), "secp521r1": frozenset({"ES512"})}
_OKP = frozenset({"EdDSA"})
DEFAULT_APPLICATION_CLAIMS = ("azp", "client_id")
# Tokens are short; anything longer is refused before any parsing work.
MAX_TOKEN_LENGTH = 16 * 1024


class KeyMaterialError(ValueError):
    """The configured key source cannot be used (missing, unreadable, not a key, wrong kind)."""


class TokenError(Exception):
    """A presented token is not acceptable; ``reason`` is safe to send to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    key: Any  # a cryptography public key object, or bytes for HMAC
    algorithms: frozenset[str]
    kid: str | None = None


def algorithms_for(key: Any) -> frozenset[str]:
    """The algorithms a public key of this type can verify (empty: a type the gateway does not use)."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC_BY_CURVE.get(key.curve.name, frozenset())
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return _OKP
    return frozenset()


def parse_jwks(text: str) -> list[VerifyingKey]:
    """The public keys of a JWKS document; raises KeyMaterialError (symmetric `oct` keys are refused)."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise KeyMaterialError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyMaterialError("not a JWKS document: expected an object with a `keys` list")
    keys: list[VerifyingKey] = []
    for i, entry in enumerate(document["keys"]):
        if not isinstance(entry, dict):
            raise KeyMaterialError(f"key {i} is not an object")
        if entry.get("kty") == "oct":
            raise KeyMaterialError(f"key {i} is a symmetric (oct) key: a secret does not belong in a JWKS file")
        if entry.get("use", "sig") != "sig":
            continue  # encryption keys never verify signatures
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            raise KeyMaterialError(f"key {i} is not usable: {exc}") from None
        allowed = algorithms_for(jwk.key)
        if "alg" in entry:  # a key that names its algorithm verifies that one only
            allowed = allowed & {entry["alg"]}
        keys.append(VerifyingKey(jwk.key, allowed, entry.get("kid")))
    if not keys:
        raise KeyMaterialError("the JWKS document has no signing keys")
    return keys


def parse_public_key(data: bytes) -> VerifyingKey:
    """A PEM public key; raises KeyMaterialError."""
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"not a PEM public key: {exc}") from None
    allowed = algorithms_for(key)
    if not allowed:
        raise KeyMaterialError(f"unsupported key type {type(key).__name__}")
    return VerifyingKey(key, allowed)


def load_keys(settings: JWTSettings, base_dir: Path, env: Mapping[str, str]) -> list[VerifyingKey]:
    """The keys of the configured source (files resolve against ``base_dir``); raises KeyMaterialError."""
    count("jwt_keys")
    if settings.jwks_file is not None:
        return parse_jwks(_read(base_dir, settings.jwks_file).decode("utf-8", errors="replace"))
    if settings.public_key_file is not None:
        return [parse_public_key(_read(base_dir, settings.public_key_file))]
    if settings.jwks_url is not None:
        return []  # fetched when the config starts serving (gateway/build/remote_keys.py), never while building
    if settings.secret is not None:
        value = env.get(settings.secret.env)
        if not value:
            return []  # an unset secret verifies nothing: every token is refused (validate warns)
        return [VerifyingKey(value.encode("utf-8"), HMAC_ALGORITHMS)]
    raise KeyMaterialError("no key source: set one of jwks_file, public_key_file, secret or jwks_url")


def _read(base_dir: Path, relative: str) -> bytes:
    path = Path(relative)
    path = path if path.is_absolute() else base_dir / path
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"cannot read {relative}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class JWTVerifier:
    """One identify policy's token validation, built once per config."""

    issuer: str
    audience: tuple[str, ...]
    algorithms: frozenset[str]
    keys: tuple[VerifyingKey, ...]
    claims: tuple[str, ...]  # where the application's client id is looked up, in order
    leeway: float

    # How a `jwks_url`'s documents are read (gateway/build/remote_keys.py gets it from here, so that module
    # does not load PyJWT for configs without tokens).
    parse_document = staticmethod(parse_jwks)

    @classmethod
    def build(cls, settings: JWTSettings, base_dir: Path, env: Mapping[str, str]) -> JWTVerifier:
        algorithms = frozenset(settings.algorithms)
        if algorithms & HMAC_ALGORITHMS and algorithms - HMAC_ALGORITHMS:
            raise KeyMaterialError("HMAC and public-key algorithms are never allowed together")
        keys = [
            VerifyingKey(k.key, k.algorithms & algorithms, k.kid)
            for k in load_keys(settings, base_dir, env)
            if k.algorithms & algorithms
        ]
        claims = (settings.application_claim,) if settings.application_claim else DEFAULT_APPLICATION_CLAIMS
        return cls(settings.issuer, tuple(settings.audience), algorithms, tuple(keys), claims, settings.leeway)

    def kid_of(self, token: str) -> tuple[bool, str | None]:
        """(True, the ``kid`` of the token's header or None), or (False, None) for a token that is not a JWT."""
        if len(token) > MAX_TOKEN_LENGTH:
            return False, None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return False, None
        return True, kid if isinstance(kid, str) else None

    def verify(self, token: str, remote: tuple[VerifyingKey, ...] = ()) -> tuple[str, float | None]:
        """(client id, expiry as epoch seconds) of a valid token; raises TokenError with a reason safe to show.

        ``remote``: the keys of a ``jwks_url`` as last fetched, tried beside the configured ones."""
        client, expires, _ = self.decode(token, remote)
        return client, expires

    def decode(self, token: str, remote: tuple[VerifyingKey, ...] = ()) -> tuple[str, float | None, Mapping[str, Any]]:
        """Like :meth:`verify`, with the verified claims (push group rules read one: gateway/push/groups.py)."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenError("algorithm not allowed")
        kid = header.get("kid")
        keys = self.keys + tuple(k for k in remote if k.algorithms & self.algorithms) if remote else self.keys
        candidates = [k for k in keys if alg in k.algorithms and (kid is None or k.kid in (None, kid))]
        if kid is not None and any(k.kid == kid for k in candidates):
            candidates = [k for k in candidates if k.kid == kid]
        if not candidates:
            raise TokenError("unknown signing key")
        claims: dict[str, Any] | None = None
        for candidate in candidates:
            try:
                claims = jwt.decode(
                    token,
                    candidate.key,
                    algorithms=[alg],
                    issuer=self.issuer,
                    audience=list(self.audience) or None,
                    leeway=self.leeway,
                    options={
                        "require": ["exp", "iss"],
                        "verify_aud": bool(self.audience),
                        "strict_aud": False,
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue  # another key of the set may have signed it
            except jwt.PyJWTError as exc:
                raise TokenError(_reason(exc)) from None
        if claims is None:
            raise TokenError("bad signature")
        exp = claims.get("exp")
        return self._client(claims), float(exp) if isinstance(exp, (int, float)) else None, claims

    def _client(self, claims: Mapping[str, Any]) -> str:
        for name in self.claims:
            value = claims.get(name)
            if isinstance(value, str) and value:
                return value
        raise TokenError(f"no {' or '.join(self.claims)} claim")


# Most specific first: several of PyJWT's errors subclass InvalidTokenError.
_REASONS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidIssuedAtError, "malformed iat claim"),
)


def _reason(exc: Exception) -> str:
    """A short, token-free reason for a PyJWT error."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing {exc.claim} claim"
    for kinds, reason in _REASONS:
        if isinstance(exc, kinds):
            return reason
    if isinstance(exc, (jwt.DecodeError, jwt.InvalidTokenError)):
        return "malformed"
    return "invalid"
