"""The resource model: what operators write in YAML, as pydantic models.

These models are the runtime truth. ``schemas/`` is generated from them
(``wsgate schemas``), and everything downstream (rules, plan, compile, the
runtime) reads these objects, never raw YAML.

Every resource document has a ``kind`` and a ``name``. Durations are seconds
(numbers); sizes are bytes. Field descriptions end up in the JSON Schema, so
editors show them as operators type.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Names are referred to across files (an API's ports, an application's APIs),
# so keep them to characters that survive YAML, URLs and log fields untouched.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="A unique name: letters, digits, '.', '_' or '-'.")]
Seconds = Annotated[float, Field(gt=0, description="A duration in seconds.")]
PositiveInt = Annotated[int, Field(ge=1)]
SHA256_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HeaderName = Annotated[str, Field(pattern=HEADER_NAME_PATTERN)]


HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"  # an HTTP header name (a token, RFC 9110)


class Strict(BaseModel):
    """Base for every config object: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


# The config format this wsgate reads (docs/config-versions.md says what a future version means).
API_VERSION = "wsgate/v1"
API_VERSIONS = (API_VERSION,)


LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62}[A-Za-z0-9])?$"
LabelKey = Annotated[str, Field(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63)]


class Versioned(Strict):
    """Base for every resource document: the optional format version comes first."""

    # Excluded from dumps: the version names the format, not the resource, so writing it (or not) changes
    # neither the config digest nor a plan.
    api_version: Literal["wsgate/v1"] | None = Field(
        None, alias="apiVersion", exclude=True,
        description="The config format, `wsgate/v1`. Optional today; documents without it are read as wsgate/v1.")
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        description="Free-form `key: value` tags (`team: payments`): `validate`/`plan --selector team=payments` "
        "work on the resources that carry them, and organisation `requirements` can select APIs by them.")


class PolicyBase(Strict):
    """What every policy has besides its own settings."""

    name: Name | None = Field(
        None, description="Optional label: `wsgate plan` matches policies by name, else by type (and stage or `per`)."
    )


# --------------------------------------------------------------------- Port


HOST_PATTERN = r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"


def _host_names(value: list[str]) -> list[str]:
    for host in value:
        if not re.fullmatch(HOST_PATTERN, host):
            raise ValueError(f"{host!r} is not a host name (no port, no scheme; `*.` only as the first label)")
    return [host.lower() for host in value]


class SNICertificate(Strict):
    """A certificate served to clients that ask for one of ``hosts`` by SNI."""

    hosts: list[str] = Field(min_length=1, description="Server names (SNI) this certificate answers; `*.` allowed.")
    cert: str = Field(description="Path to the PEM certificate chain, relative to the file that declares it.")
    key: str = Field(description="Path to the PEM private key, relative to the file that declares it.")

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return _host_names(value)


class ClientCertificates(Strict):
    """mTLS: client certificates verified against a CA bundle from the config tree."""

    ca_file: str = Field(description="PEM bundle of the CAs that issue client certificates, relative to the file.")
    mode: Literal["required", "optional"] = Field(
        "required",
        description="`required`: the TLS handshake fails without a valid client certificate; `optional`: clients "
        "may present one (then it must verify) and `identify: by: [certificate]` can use it.",
    )


class TLSFiles(Strict):
    cert: str = Field(description="Path to the PEM certificate chain, relative to the file that declares it.")
    key: str = Field(description="Path to the PEM private key, relative to the file that declares it.")
    sni: list[SNICertificate] = Field(
        default_factory=list,
        description="Further certificates picked by the client's SNI server name; others get `cert`. Each is "
        "renewed on reload when its files change.",
    )
    client_certificates: ClientCertificates | None = Field(
        None, description="Ask clients for a certificate (mTLS), verified against `ca_file`."
    )


class PortLimits(Strict):
    handshake_timeout: Seconds = Field(10.0, description="Seconds a client has to complete its HTTP upgrade.")
    max_connections: PositiveInt | None = Field(
        None, description="Open client connections this listener accepts at most; none means no listener cap."
    )


class Port(Versioned):
    """A listener: where clients connect."""

    kind: Literal["Port"]
    name: Name = Field(description="The alias APIs use in their `ports` list.")
    description: str = ""
    port: int = Field(ge=0, le=65535, description="TCP port number; 0 lets the system pick a free one (tests).")
    host: str = Field("0.0.0.0", description="Address to bind.")
    enabled: bool = Field(True, description="A disabled port is not started; APIs on it are unreachable through it.")
    tls: TLSFiles | None = Field(None, description="Serve wss:// with this certificate and key.")
    limits: PortLimits = PortLimits()


# --------------------------------------------------------------- policies


class EnvKey(Strict):
    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable holding the key.")


# Asymmetric algorithms verify with public keys (safe in git); HS* need a shared secret from the environment.
IdentifyMethod = Literal["api_key", "hostname", "ip", "jwt", "basic", "certificate", "authorizer"]
JWTAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "HS256", "HS384", "HS512",
]


class JWTSettings(Strict):
    """How `by: [jwt]` validates bearer tokens. One key source: jwks_file, public_key_file, secret or jwks_url."""

    issuer: str = Field(min_length=1, description="Required `iss` claim: tokens from any other issuer are refused.")
    audience: list[str] = Field(
        default_factory=list,
        description="Accepted `aud` values (one must match). Empty: the audience is not checked (warned).",
    )
    algorithms: list[JWTAlgorithm] = Field(
        default_factory=lambda: list[JWTAlgorithm](["RS256", "ES256"]),
        min_length=1,
        description="Signature algorithms accepted; `none` never is. HS* only with `secret`, and never mixed "
        "with public-key algorithms.",
    )
    jwks_file: str | None = Field(
        None, description="JWKS JSON document with the issuer's public keys, relative to the declaring file."
    )
    public_key_file: str | None = Field(
        None, description="PEM public key (RSA, EC or Ed25519), relative to the declaring file."
    )
    secret: EnvKey | None = Field(
        None, description="`{env: VARIABLE}` holding the HMAC secret for HS* algorithms; never a literal."
    )
    jwks_url: str | None = Field(
        None,
        description="HTTPS URL of the issuer's JWKS document (`http://` only to 127.0.0.1 or localhost, warned). "
        "Fetched when the config starts serving, kept, refetched in the background past `jwks_max_age` and at "
        "once for a token whose `kid` it does not know; the last good keys stay when a fetch fails.",
    )
    jwks_timeout: Seconds = Field(
        2.0, description="Seconds a JWKS fetch may take; an upgrade waiting for one waits no longer."
    )
    jwks_max_age: Seconds = Field(300.0, description="Seconds fetched keys are used before a background refetch.")
    jwks_min_refresh_interval: float = Field(
        10.0, ge=0,
        description="Seconds between two fetches asked for by tokens with an unknown `kid` (a flood of made-up "
        "kids costs the issuer one fetch per interval); such tokens are refused meanwhile.",
    )
    jwks_ca_file: str | None = Field(
        None, description="CA bundle that verifies the JWKS server, relative to the declaring file (default: the "
        "system's CAs)."
    )
    application_claim: str | None = Field(
        None,
        min_length=1,
        description="Claim naming the application (matched against `identifiers.jwt_clients`). "
        "Default: `azp`, else `client_id`.",
    )
    leeway: float = Field(30.0, ge=0, description="Seconds of clock skew allowed for `exp`, `nbf` and `iat`.")
    query_parameter: bool = Field(
        True,
        description="Also accept the token in the `access_token` query parameter (browsers cannot set headers "
        "on a WebSocket; query strings end up in other proxies' access logs).",
    )
    close_at_expiry: bool = Field(
        True,
        description="Close a connection with 1008 when its token expires (`exp` plus `leeway`): a token "
        "outliving its connection's right to exist is what revocation by expiry must prevent.",
    )


AuthorizerCredential = Literal["authorization", "cookie", "api_key", "access_token"]


class AuthorizerSettings(Strict):
    """How `by: [authorizer]` asks an HTTP endpoint at the upgrade (docs/integrations.md)."""

    url: str = Field(
        description="Where the gateway POSTs each upgrade's path, query, headers and peer as JSON: `https://`, or "
        "`http://` to 127.0.0.1 or localhost only (warned)."
    )
    timeout: Seconds = Field(
        2.0, description="Seconds the answer may take; past it the authorizer counts as down (`unavailable_status`)."
    )
    forward_credentials: list[AuthorizerCredential] = Field(
        default_factory=list,
        description="Credentials the authorizer gets: `authorization` (the header), `cookie`, `api_key` (the "
        "`x-Gateway-APIKey` header and query parameter), `access_token` (the query parameter). The others are "
        "removed from what it is sent. What is forwarded is also the cache key (its digest).",
    )
    cache_ttl: float = Field(
        60.0, ge=0,
        description="Seconds an answer (allow or refusal) is reused for the same forwarded credentials; 0: ask "
        "every time. An answer's own `expires_in` shortens it. Requests forwarding no credential are not cached.",
    )
    unavailable_status: Literal[401, 503] = Field(
        503,
        description="What the client gets while the authorizer cannot answer (refused, timed out, 5xx, not JSON): "
        "503 (try again later, with Retry-After) or 401. The gateway never lets a client in without an answer.",
    )
    ca_file: str | None = Field(
        None, description="CA bundle that verifies the authorizer, relative to the declaring file (default: the "
        "system's CAs)."
    )
    cert: str | None = Field(None, description="Client certificate chain (PEM) the gateway presents (mTLS).")
    key: str | None = Field(None, description="Private key (PEM) of `cert`.")

    @model_validator(mode="after")
    def _cert_and_key(self) -> AuthorizerSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("`cert` and `key` go together: the client certificate needs its private key")
        return self


class IdentifyPolicy(PolicyBase):
    """Identify & authorize application: only applications registered to the API get in (else 401)."""

    type: Literal["identify"]
    by: list[IdentifyMethod] = Field(
        default_factory=lambda: list[IdentifyMethod](["api_key"]),
        min_length=1,
        description="Identifiers tried in order; the first that names a registered application wins.",
    )
    api_key_header: bool = Field(True, description="Also accept the key in the `x-Gateway-APIKey` header.")
    hostname_lookup_timeout: Seconds = Field(2.0, description="Seconds to wait for a reverse DNS lookup.")
    allow_anonymous: bool = Field(
        False, description="Let unidentified clients in as the anonymous application instead of refusing with 401."
    )
    jwt: JWTSettings | None = Field(None, description="Bearer token validation; required when `by` lists `jwt`.")
    authorizer: AuthorizerSettings | None = Field(
        None, description="The HTTP endpoint that decides each upgrade; required when `by` lists `authorizer`."
    )


class ThrottleTier(Strict):
    """Applications that get their own connection limit on this API (like a Kong consumer group)."""

    applications: list[Name] = Field(min_length=1, description="The tier's applications (each in one tier only).")
    max_connections: PositiveInt = Field(description="Active connections allowed, counted as the policy's `per`.")


class ThrottlePolicy(PolicyBase):
    """Limit active connections; past the limit the upgrade fails with 503."""

    type: Literal["throttle"]
    max_connections: PositiveInt = Field(description="Active connections allowed.")
    per: Literal["api", "application"] = Field("api", description="Count per API, or per identified application.")
    retry_after: PositiveInt = Field(5, description="Seconds sent in the Retry-After header of a 503.")
    on_state_error: Literal["allow", "refuse"] = Field(
        "allow", description="While the shared state backend (Redis) is unreachable: `allow` counts in this process "
        "against the same limit until it is back, `refuse` answers 503 `state_unavailable`.")
    applications: list[Name] = Field(
        default_factory=list,
        description="Only these applications are limited by `max_connections` (empty: every application, the "
        "anonymous one included). Needs an identify policy before it.",
    )
    tiers: dict[Name, ThrottleTier] = Field(
        default_factory=dict,
        description="Named groups of applications with their own `max_connections` on this API, e.g. "
        "`partner: {applications: [acme], max_connections: 100}`. With `per: api` a tier shares one count.",
    )


class TransformPolicy(PolicyBase):
    """Operator code that rewrites or drops messages at one stage."""

    type: Literal["transform"]
    stage: Literal["client", "server"] = Field(
        description="`client`: messages from the client to the native server; `server`: the other way."
    )
    callable: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="`package.module:function`, importable with the config directory on sys.path.",
    )
    messages: Literal["text", "binary", "all"] = Field("all", description="Which message types the transform sees.")
    on_error: Literal["pass", "drop", "close"] = Field(
        "close", description="When the callable raises: pass the original, drop the message, or close with 1011."
    )


class MaskRule(Strict):
    """Data masking for stored payloads: a JSON field's value, or every match of a pattern, is replaced."""

    json_field: str | None = Field(
        None,
        pattern=r"^[^.\s]+(\.[^.\s]+)*$",
        description="A field of JSON text payloads: a bare name (`password`) matches at any depth, a dotted "
        "path (`card.number`) from the top; through arrays either way.",
    )
    pattern: str | None = Field(None, description="A regular expression; every match in a text payload is replaced.")
    replacement: str = Field("***", description="What the masked value or match becomes.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_target(self) -> MaskRule:
        if (self.json_field is None) == (self.pattern is None):
            raise ValueError("a mask rule has exactly one of `json_field` or `pattern`")
        return self


class SyslogDestination(Strict):
    """Invocation records to syslog: RFC 5424 messages whose text is the JSON record (masked as in the file)."""

    address: str = Field(
        "/dev/log", pattern=r"^(/\S+|unix:///\S+|udp://[^/\s]+|tcp://[^/\s]+)$",
        description="A unix datagram socket (`/dev/log`, `unix:///run/syslog.sock`), `udp://HOST:PORT` or "
        "`tcp://HOST:PORT` (octet-counted frames).")
    facility: Literal["user", "daemon", "auth", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
                      "local7"] = "local0"
    app_name: str = Field("wsgate", pattern=r"^[!-~]{1,48}$", description="The APP-NAME field of each message.")
    timeout: Seconds = Field(2.0, description="Seconds a send may take; a batch that fails is dropped (counted).")


class OTLPLogs(Strict):
    """Invocation records as OpenTelemetry log records over OTLP/HTTP (JSON), e.g. to a collector."""

    endpoint: str = Field(pattern=r"^https?://\S+$",
                          description="The collector's logs URL, e.g. `http://otel-collector:4318/v1/logs`.")
    headers: dict[Annotated[str, Field(pattern=HEADER_NAME_PATTERN)], EnvKey] = Field(
        default_factory=dict, description="Headers sent with each export, each `{env: VARIABLE}` (an API token).")
    service_name: str = Field("wsgate", description="The `service.name` resource attribute.")
    timeout: Seconds = Field(5.0, description="Seconds an export may take; a batch that fails is dropped (counted).")


class LogInvocationPolicy(PolicyBase):
    """Transaction records of upgrades, messages and closes."""

    type: Literal["log-invocation"]
    store_client_messages: bool = Field(False, description="Record client→server messages (payload included).")
    store_server_messages: bool = Field(False, description="Record server→client messages (payload included).")
    compress: bool = Field(False, description="Store payloads gzip-compressed and base64-encoded.")
    frequency: Literal["always", "on-failure"] = Field(
        "always", description="`on-failure` records only refused or failed connections."
    )
    file: str | None = Field(None, description="JSON-lines file (relative to the config file); stdout only if unset.")
    max_file_bytes: PositiveInt = Field(10 * 2**20, description="Rotate the file past this size.")
    backups: int = Field(5, ge=0, description="Rotated files kept.")
    max_payload_bytes: PositiveInt = Field(64 * 1024, description="Longer payloads are truncated in the record.")
    mask: list[MaskRule] = Field(
        default_factory=list,
        description="Data masking: applied to stored text payloads, in order, before truncation and compression "
        "(sizes stay those of the real message). Masking runs in the log writer thread, off the relay's path.",
    )
    stdout: bool | None = Field(
        None,
        description="Also emit every record through the gateway's structured log. Default: only when `file` is "
        "unset, `syslog` and `otlp` too; with a destination, `true` costs gateway CPU per record.",
    )
    syslog: SyslogDestination | None = Field(
        None, description="Also send each record to syslog (same masking and truncation as the file; a bounded "
        "queue, so a syslog that is down drops records, counted, and never slows the relay).")
    otlp: OTLPLogs | None = Field(
        None, description="Also export each record as an OpenTelemetry log record over OTLP/HTTP (same masking; "
        "bounded like `syslog`).")


class RoutingPolicy(PolicyBase):
    """How upgrades reach the native endpoints."""

    type: Literal["routing"]
    strategy: Literal["straight-through", "round-robin", "least-connections", "consistent-hash"] = Field(
        "straight-through",
        description="`straight-through`: the first healthy endpoint in list order; `round-robin`: rotate over the "
        "healthy ones by weight; `least-connections`: the fewest open and pending connections per weight; "
        "`consistent-hash`: the same key always reaches the same endpoint while it is healthy (sticky).",
    )
    hash_on: Literal["application", "client_ip", "header", "query"] = Field(
        "client_ip",
        description="What `consistent-hash` hashes: the identified application's name, the client address, "
        "a request header or a query parameter (named by `hash_key`).",
    )
    hash_key: str | None = Field(
        None, min_length=1, description="The header or query parameter name when `hash_on` is `header` or `query`."
    )

    @model_validator(mode="after")
    def _hash_key_when_needed(self) -> RoutingPolicy:
        if self.strategy == "consistent-hash" and self.hash_on in ("header", "query") and not self.hash_key:
            raise ValueError(f"`hash_on: {self.hash_on}` needs `hash_key`: the {self.hash_on} name to hash")
        return self


class OriginPolicy(PolicyBase):
    """Refuse upgrades from browsers on other sites (403): cross-site WebSocket hijacking."""

    type: Literal["origin"]
    allow: list[str] = Field(
        min_length=1,
        description="Allowed Origin values: exact (`https://app.example.com`) or a pattern with `*` in the host "
        "(`https://*.example.com`).",
    )
    allow_missing: bool = Field(False, description="Let in clients that send no Origin header (non-browsers).")


class RateLimitTier(Strict):
    """Applications that get their own rate on this API; unset numbers are the policy's."""

    applications: list[Name] = Field(min_length=1, description="The tier's applications (each in one tier only).")
    messages_per_second: float | None = Field(None, gt=0, description="The tier's sustained messages per second.")
    burst_messages: PositiveInt | None = Field(None, description="The tier's message burst.")
    bytes_per_second: float | None = Field(None, gt=0, description="The tier's sustained payload bytes per second.")
    burst_bytes: PositiveInt | None = Field(None, description="The tier's byte burst.")


class RateLimitPolicy(PolicyBase):
    """Messages and bytes per second in one direction: a token bucket with a burst, per connection,
    application or API. Several may stack (all must have room)."""

    type: Literal["rate-limit"]
    direction: Literal["client", "server"] = Field(
        "client", description="`client`: messages the client sends; `server`: messages the native server sends."
    )
    per: Literal["connection", "application", "api"] = Field(
        "connection",
        description="One bucket per connection, per identified application (all its connections to this API), "
        "or one for the whole API.",
    )
    messages_per_second: float | None = Field(
        None, gt=0, description="Sustained messages per second; none: messages are not counted."
    )
    burst_messages: PositiveInt | None = Field(
        None, description="Messages that may arrive at once (the bucket's size). Default: one second's worth."
    )
    bytes_per_second: float | None = Field(
        None, gt=0, description="Sustained payload bytes per second; none: bytes are not counted."
    )
    burst_bytes: PositiveInt | None = Field(
        None,
        description="Payload bytes that may arrive at once. Default: one second's worth, at least the API's "
        "largest message. A burst below one largest message is an error (that message could never pass).",
    )
    on_exceed: Literal["delay", "drop", "close"] | None = Field(
        None,
        description="`delay`: stop reading the sender until tokens return (no loss); `drop`: swallow the message "
        "(counted, logged, `error_message` sent back); `close`: close with 1008 \"rate limit\". "
        "Default: `delay` for `client`, `drop` for `server`.",
    )
    error_message: str | None = Field(
        None,
        description="With `drop`: a text message sent back to the sender of each dropped message, e.g. "
        "`{\"type\": \"error\", \"reason\": \"rate limit\"}` (declare it in `messages` to document it).",
    )
    applications: list[Name] = Field(
        default_factory=list,
        description="Only these applications are limited by the policy's numbers (empty: every application). "
        "Needs an identify policy before it.",
    )
    tiers: dict[Name, RateLimitTier] = Field(
        default_factory=dict,
        description="Named groups of applications with their own numbers on this API, counted as the policy's "
        "`per`, e.g. `partner: {applications: [acme], messages_per_second: 100}`.",
    )

    @model_validator(mode="after")
    def _limits_something(self) -> RateLimitPolicy:
        if self.messages_per_second is None and self.bytes_per_second is None:
            raise ValueError("a rate-limit needs `messages_per_second`, `bytes_per_second` or both")
        if self.burst_messages is not None and self.messages_per_second is None:
            raise ValueError("`burst_messages` needs `messages_per_second`")
        if self.burst_bytes is not None and self.bytes_per_second is None:
            raise ValueError("`burst_bytes` needs `bytes_per_second`")
        if self.error_message is not None and self.action != "drop":
            raise ValueError("`error_message` is sent only with `on_exceed: drop`")
        return self

    @property
    def action(self) -> str:
        """``on_exceed`` with its per-direction default."""
        return self.on_exceed or ("delay" if self.direction == "client" else "drop")


ValidationMode = Literal["off", "log", "enforce"]


class ValidateMessagesPolicy(PolicyBase):
    """Check each message against the API's `messages` definitions: type, size and JSON Schema."""

    type: Literal["validate-messages"]
    client: ValidationMode = Field(
        "enforce", description="Messages from the client: `off`, `log` (record violations, pass them) or `enforce`."
    )
    server: ValidationMode = Field("off", description="Messages from the native server: `off`, `log` or `enforce`.")
    discriminator: str | None = Field(
        None,
        min_length=1,
        description="A top-level field of JSON messages (e.g. `type`) whose value picks the definition at once: "
        "the value a definition's schema fixes with `const` (or a one-value `enum`). Definitions without one are "
        "tried in order.",
    )
    on_violation: Literal["drop", "close"] = Field(
        "close",
        description="With `enforce`: `drop` the message (and send `error_message` back), or `close`: 1007 for a "
        "wrong type, 1009 for a message over its definition's `max_size`, 1008 for a schema violation.",
    )
    error_message: str | None = Field(
        None, description="With `on_violation: drop`: a text message sent back to the sender of each dropped message."
    )
    offload_above: PositiveInt | None = Field(
        65536,
        description="Text messages longer than this (characters; bytes for ASCII) are parsed and checked in a "
        "worker process, not on the event loop, so one big message does not hold up every other connection; the "
        "connection's later messages wait, in order. `null`: every message is checked on the event loop.",
    )

    @model_validator(mode="after")
    def _reply_only_on_drop(self) -> ValidateMessagesPolicy:
        if self.error_message is not None and self.on_violation != "drop":
            raise ValueError("`error_message` is sent only with `on_violation: drop`")
        return self


Policy = Annotated[
    IdentifyPolicy | ThrottlePolicy | TransformPolicy | LogInvocationPolicy | RoutingPolicy | OriginPolicy
    | RateLimitPolicy | ValidateMessagesPolicy,
    Field(discriminator="type"),
]


# ---------------------------------------------------------------------- API


class Endpoint(Strict):
    url: str = Field(description="The native WebSocket endpoint: `ws://` or `wss://` URL.")
    weight: PositiveInt = Field(1, le=1000, description="Share of new connections relative to the other endpoints.")


class UpstreamTLS(Strict):
    ca_file: str | None = Field(None, description="CA bundle to verify the native server; the system's if unset.")
    verify: bool = Field(True, description="Turning verification off is logged as a warning at every start.")
    server_hostname: str | None = Field(None, description="SNI and certificate name, if not the URL's host.")
    cert: str | None = Field(
        None, description="Client certificate chain (PEM) the gateway presents to wss upstreams that ask (mTLS)."
    )
    key: str | None = Field(None, description="Private key of `cert` (PEM).")

    @model_validator(mode="after")
    def _cert_and_key(self) -> UpstreamTLS:
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise ValueError(f"`{given}` needs `{missing}`: an upstream client certificate needs both")
        return self


class ActiveHealthCheck(Strict):
    """Probes every endpoint at an interval; an unhealthy endpoint gets no new connections."""

    type: Literal["websocket", "tcp"] = Field(
        "websocket",
        description="`websocket`: a real handshake to the endpoint's URL (101 is healthy, then a clean close); "
        "`tcp`: a TCP (and TLS, for wss) connect only.",
    )
    interval: Seconds = Field(5.0, description="Seconds between probes of one endpoint.")
    timeout: Seconds = Field(2.0, description="Seconds a probe may take before it counts as a failure.")
    healthy_threshold: PositiveInt = Field(
        2, description="Consecutive successes that make an unhealthy endpoint healthy."
    )
    unhealthy_threshold: PositiveInt = Field(
        2, description="Consecutive failures that make a healthy endpoint unhealthy."
    )


class PassiveHealthCheck(Strict):
    """Outlier detection from real upgrades: failed connects, timeouts and non-101 answers."""

    enabled: bool = Field(True, description="Count failed upstream handshakes against their endpoint.")
    failures: PositiveInt = Field(
        2, description="Consecutive failed handshakes (refused, timed out, 5xx or invalid; not 4xx) that mark an "
        "endpoint unhealthy. Never the API's last healthy one."
    )
    cool_down: Seconds = Field(
        10.0, description="Seconds an endpoint marked by passive checks gets no new connections."
    )


class Failover(Strict):
    """What an upgrade does when its endpoint fails the handshake: try the next healthy one."""

    retries: int = Field(
        2, ge=0, le=16, description="Further endpoints tried after the first fails; 0: the client gets the error."
    )
    budget: Seconds | None = Field(
        None,
        description="Seconds all attempts of one upgrade may take together; default: `connect_timeout`. "
        "Each attempt is also bounded by `connect_timeout`.",
    )


# Headers the gateway writes itself on the upstream request: a configured header may not replace them.
RESERVED_UPSTREAM_HEADERS = frozenset({
    "host", "upgrade", "connection", "content-length", "transfer-encoding", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "x-real-ip", "forwarded", "x-gateway-application", "x-gateway-connection-id",
})


class Upstream(Strict):
    endpoints: list[Endpoint] = Field(min_length=1, description="Native endpoints; the routing policy picks one.")
    connect_timeout: Seconds = Field(10.0, description="Seconds to connect and complete the upstream handshake.")
    tls: UpstreamTLS = UpstreamTLS()
    health_check: ActiveHealthCheck | None = Field(
        None, description="Active health checks; none: endpoints are judged by real upgrades only (passive)."
    )
    passive: PassiveHealthCheck = PassiveHealthCheck()
    failover: Failover = Failover()
    max_pending: PositiveInt = Field(
        256, description="Circuit breaker: upstream handshakes in flight per endpoint; past it the endpoint is "
        "skipped, and with none left the upgrade waits for a slot (oldest first) within the failover budget, "
        "then gets 503."
    )
    retry_after: PositiveInt = Field(
        5, description="Seconds in the Retry-After of the 503 sent when no endpoint is healthy."
    )

    headers: dict[Annotated[str, Field(pattern=HEADER_NAME_PATTERN)], EnvKey] = Field(
        default_factory=dict,
        description="Headers added to every upstream request, each value `{env: VARIABLE}` (never a literal: "
        "this is where upstream credentials live, e.g. `Authorization: {env: UPSTREAM_AUTH}`). A client's own "
        "header of the same name is dropped. Values are never logged or shown.",
    )

    @field_validator("headers")
    @classmethod
    def _not_reserved(cls, value: dict[str, EnvKey]) -> dict[str, EnvKey]:
        for name in value:
            lower = name.lower()
            if lower in RESERVED_UPSTREAM_HEADERS or lower.startswith("sec-websocket-"):
                raise ValueError(f"header {name!r} is set by the gateway itself and cannot be configured")
        return value

    def live_identity(self) -> tuple[object, ...]:
        """What a live connection depends on: endpoint URLs, timeouts and TLS. Health checks, failover, weights
        and caps only steer new connections, so changing them disturbs no one (plan and reload both ask this)."""
        return (tuple(e.url for e in self.endpoints), self.connect_timeout, self.tls)


# ------------------------------------------------------------ message routes


RouteKey = Annotated[str, Field(min_length=1, max_length=128, description="The value the selection expression "
                                "must yield, or `$default`, `$connect`, `$disconnect`.")]
SPECIAL_ROUTE_KEYS = ("$default", "$connect", "$disconnect")


class RouteSelection(Strict):
    """How a client message picks its route: a field of JSON text messages, looked up once per message."""

    expression: str | None = Field(
        None,
        pattern=r"^(\$request\.body\.[^.\s]+(\.[^.\s]+)*|/\S*|[^$/.\s][^.\s]*(\.[^.\s]+)*)$",
        description="The field whose value is the route key: a simple path (`action`, `meta.kind`), a JSON "
        "Pointer (`/action`) or AWS's form (`$request.body.action`). Default: the API's validate-messages "
        "`discriminator`.",
    )
    no_route: Literal["drop", "close"] = Field(
        "drop",
        description="A message no route matches when there is no `$default` route (binary, not JSON, no such "
        "key): `drop` it (and send `error_message` back) or `close` the connection with 1008.",
    )
    error_message: str | None = Field(
        None, description="With `no_route: drop`: a text message sent back for each message no route takes.")


class IntegrationErrors(Strict):
    """What a failed integration (HTTP status outside 2xx, timeout, a route upstream that cannot be reached)
    does to the client connection. Counted in `wsgate_integration_errors_total` either way."""

    action: Literal["reply", "close", "ignore"] = Field(
        "reply",
        description="`reply`: send `message` to the client; `close`: close the connection with `close_code`; "
        "`ignore`: nothing (the message is lost).",
    )
    message: str = Field(
        '{"error": "integration failed"}',
        description="With `reply`: the text message the client gets. `{status}` is replaced by the HTTP status "
        "(0 for a timeout or a connection failure).",
    )
    close_code: int = Field(1011, ge=1000, le=4999, description="With `close`: the close code.")


class HTTPIntegration(Strict):
    """POST each routed message to an HTTP backend; a 2xx answer's body goes back to the client."""

    url: str = Field(description="`http://` or `https://` URL the messages are POSTed to.")
    timeout: Seconds = Field(10.0, description="Seconds one request may take, connect included.")
    tls: UpstreamTLS = Field(default_factory=lambda: UpstreamTLS(),
                             description="CA, verification and client certificate for `https://`.")
    headers: dict[Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")], EnvKey] = Field(
        default_factory=dict,
        description="Headers added to every request, each `{env: VARIABLE}` (credentials; never logged).",
    )
    on_error: IntegrationErrors = IntegrationErrors()
    retries: int = Field(
        2, ge=0, le=10,
        description="`$disconnect` only: further attempts after a failed one (the event is fire-and-forget).")
    refuse_status: int = Field(
        403, ge=400, le=599,
        description="`$connect` only: the HTTP status the client's upgrade gets when the backend does not answer "
        "2xx in time.")


class WebSocketIntegration(Strict):
    """Relay the route's messages to a WebSocket upstream opened for each client connection."""

    url: str = Field(description="`ws://` or `wss://` URL of the route's native server.")
    connect: Literal["on-demand", "at-upgrade"] = Field(
        "on-demand",
        description="`on-demand`: opened when the connection's first message for this route arrives (again after "
        "it closed); `at-upgrade`: opened before the client's 101 (the upgrade fails with 502/504 if it cannot be).",
    )
    connect_timeout: Seconds = Field(10.0, description="Seconds to connect and complete the handshake.")
    close_client: bool = Field(
        False, description="The route's upstream closing closes the client too (1014); by default only that route "
        "is closed, and reopened by the next message to it.")
    tls: UpstreamTLS = Field(default_factory=lambda: UpstreamTLS(),
                             description="CA, verification and client certificate for `wss://`.")
    headers: dict[Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")], EnvKey] = Field(
        default_factory=dict,
        description="Headers added to the upstream request, each `{env: VARIABLE}` (credentials; never logged).",
    )
    on_error: IntegrationErrors = IntegrationErrors()


class Integration(Strict):
    """Where a route's messages go: exactly one of `http` or `websocket`."""

    http: HTTPIntegration | None = None
    websocket: WebSocketIntegration | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Integration:
        if (self.http is None) == (self.websocket is None):
            raise ValueError("an integration has exactly one of `http` or `websocket`")
        return self


RoutePolicy = Annotated[
    TransformPolicy | LogInvocationPolicy | RateLimitPolicy | ValidateMessagesPolicy,
    Field(discriminator="type"),
]


class MessageRoute(Strict):
    """One route: the messages whose selection value is `key`, and where they go."""

    key: RouteKey
    description: str = ""
    integration: Integration | None = Field(None, description="Where the route's messages go (required).")
    policies: list[RoutePolicy] = Field(
        default_factory=list,
        description="Message-stage policies of this route only (validate-messages, rate-limit, transform, "
        "log-invocation), run after the API's on messages to the route and before them on its answers.",
    )


class Keepalive(Strict):
    interval: Seconds | None = Field(20.0, description="Seconds of silence before a ping; null turns pings off.")
    timeout: Seconds = Field(20.0, description="Seconds to wait for a pong before closing the leg.")


class APILimits(Strict):
    max_message_size: PositiveInt | None = Field(
        2**20, description="Largest message in bytes; larger ones close the connection with 1009. Null: no limit."
    )
    max_fragments: PositiveInt | None = Field(
        4096,
        description="Most frames one message may arrive in; more close the connection with 1009. Null: no "
        "limit. The default is websockets' own, so the gateway refuses nothing a websockets server takes.",
    )
    max_queue: PositiveInt = Field(
        16, description="Messages buffered per direction before the gateway stops reading the sender."
    )
    max_http_requests: PositiveInt = Field(
        64, description="HTTP integration requests of this API in flight at once (per process); more wait."
    )
    write_buffer: PositiveInt = Field(
        256 * 1024, description="Bytes buffered toward a slow reader before the gateway stops reading its peer."
    )
    idle_timeout: Seconds | None = Field(
        None, description="Close a connection with 1001 after this many seconds without a data message either way "
        "(pings and pongs do not count): zombie tabs are reaped. Null: never.")
    max_lifetime: Seconds | None = Field(
        None, description="Close a connection with 1001 this many seconds after its upgrade, whatever it does, so "
        "long-lived connections rebalance after a scale-out. Null: never.")


class MessageDefinition(Strict):
    name: str
    origin: Literal["client", "server"]
    type: Literal["text", "binary"] = "text"
    description: str = ""
    sample: str | None = Field(None, description="A sample payload, for documentation and tests.")
    max_size: PositiveInt | None = Field(
        None, description="Largest payload in bytes this definition allows (checked by `validate-messages`)."
    )
    json_schema: dict | None = Field(
        None,
        alias="schema",
        description="JSON Schema a JSON text payload must follow (checked by `validate-messages`); it must stand "
        "alone: every `$ref` points inside it (e.g. `#/$defs/...`).",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -------------------------------------------------------------------- push


class PushCredential(Strict):
    """A backend's key to this API's connections in the push API (docs/push.md); it reaches no other API's."""

    name: Name = Field(description="A label for plan and the logs (never the key).")
    key: str | EnvKey = Field(
        description="`{env: VARIABLE}` holding the key, `sha256:<64 hex digits>` (the key's hash) or plain "
        "text (example only: warned). Backends send it as `Authorization: Bearer KEY`.")


GROUP_VALUE_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"


class GroupRule(Strict):
    """Join a group at the upgrade, named from a fact of the request (the application, a query parameter, a
    header or a verified JWT claim)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: Literal["application", "query", "header", "claim"] = Field(
        alias="from", description="Where the value comes from: the identified application's name, a query "
        "parameter, a request header or a claim of the verified JWT (`identify: by: [jwt]`).")
    name: str | None = Field(
        None, min_length=1, description="The query parameter, header or claim; not used with `from: application`.")
    group: str | None = Field(
        None, description="The group's name, `{value}` standing for the value; default `<name>:{value}` "
        "(`application:{value}` with `from: application`).")
    pattern: str = Field(
        GROUP_VALUE_PATTERN, description="A regular expression every value must match in full; an upgrade with "
        "another value is refused with 400.")
    required: bool = Field(False, description="Refuse (400) an upgrade that brings no value.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _named(self) -> GroupRule:
        if self.source != "application" and self.name is None:
            raise ValueError(f"`from: {self.source}` needs `name`: the {self.source} to read")
        if self.group is not None and "{value}" not in self.group:
            raise ValueError("`group` must contain `{value}`: otherwise every connection joins the same group")
        return self

    def group_of(self, value: str) -> str:
        """The group a connection with ``value`` joins."""
        template = self.group or ("application:{value}" if self.source == "application" else f"{self.name}:{{value}}")
        return template.replace("{value}", value)


class APIPush(Strict):
    """Backends reach this API's connections through the push API: send, close, groups, publish."""

    credentials: list[PushCredential] = Field(
        default_factory=list, description="The backends' keys; each reaches this API's connections only.")
    groups: list[GroupRule] = Field(default_factory=list, description="Groups joined at the upgrade.")
    queue: PositiveInt = Field(
        256, description="Pushed messages waiting per connection while its client reads slowly; past it "
        "`on_overflow` happens (and is counted).")
    on_overflow: Literal["close", "drop"] = Field(
        "close", description="A push to a full queue: `close` the connection with 1013 (try again later) or `drop` "
        "the message (the push answers 429).")


def prefix_matches(prefix: str, path: str) -> bool:
    """``/chat`` covers ``/chat`` and ``/chat/...``, never ``/chatter``; ``/chat/`` covers ``/chat/...``."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix.endswith("/") or path[len(prefix)] == "/"


class API(Versioned):
    """A WebSocket API: a gateway path, the ports it is on, a native endpoint and a policy chain."""

    kind: Literal["API"]
    name: Name
    previous_names: list[Name] = Field(
        default_factory=list,
        description="Names this API had before, oldest first: a reload that finds the old name gone and this "
        "one new is a rename (`plan`: renamed, no connection disrupted), not a removal and a creation. Its live "
        "connections, and the throttle counts (kept under the oldest name), carry over.")
    version: str = Field("1.0", description="Version label, shown in logs and the plan.")
    description: str = ""
    path: str = Field(pattern=r"^/\S*$", description="Gateway path, e.g. `/websocket/EchoWS/1.0`. Trailing `/` counts.")
    match: Literal["exact", "prefix"] = Field(
        "exact",
        description="`exact`: only `path` itself (the trailing `/` counts); `prefix`: `path` and everything under "
        "it (`/chat` serves `/chat` and `/chat/room1`, not `/chatter`). The longest matching prefix wins.",
    )
    strip_prefix: bool = Field(
        False,
        description="With `match: prefix`: the upstream gets the endpoint's path plus what follows `path` in the "
        "request (`/chat/room1` -> `ws://backend/ws/room1`), instead of the endpoint's path plus the whole request "
        "path.",
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="Host names this API answers for (the `Host` header, without port; `*.example.com` matches "
        "one label). Empty: any host. Several APIs can share a port and a path when their hosts differ.",
    )
    match_headers: dict[HeaderName, str] = Field(
        default_factory=dict,
        description="Request headers this API requires, name (any case) to exact value, e.g. `{X-Version: \"2\"}`. "
        "Several APIs can share a port, host and path when these differ; the one with the most conditions that "
        "all hold wins.",
    )
    match_query: dict[Annotated[str, Field(min_length=1)], str] = Field(
        default_factory=dict,
        description="Query parameters this API requires, name to exact value, e.g. `{v: \"2\"}`; counted with "
        "`match_headers` when the most specific route is picked.",
    )
    ports: list[Name] = Field(min_length=1, description="Names of the Ports this API is served on.")
    upstream: Upstream | None = Field(
        None, description="The native WebSocket server. Required unless the API declares `routes`.")
    compression: bool = Field(
        False, description="Offer permessage-deflate to clients (the gateway then relays message by message)."
    )
    keepalive: Keepalive = Keepalive()
    limits: APILimits = APILimits()
    messages: list[MessageDefinition] = Field(default_factory=list)
    policies: list[Policy] = Field(default_factory=list, description="The policy chain, applied in order.")
    route_selection: RouteSelection | None = Field(
        None, description="How client messages pick one of `routes` (docs/routing.md, \"Message routes\").")
    routes: list[MessageRoute] = Field(
        default_factory=list,
        description="Message routes: each client message goes to the integration of the route its selection "
        "value names (`$default` for the rest); `$connect` and `$disconnect` call HTTP backends at the upgrade "
        "and after the close. An API with routes has no `upstream`.",
    )

    @model_validator(mode="after")
    def _upstream_or_routes(self) -> API:
        if self.routes and self.upstream is not None:
            raise ValueError("an API has `upstream` or `routes`, not both: with routes, each route names its "
                             "integration")
        if not self.routes and self.upstream is None:
            raise ValueError("an API needs an `upstream` (or `routes`)")
        return self

    @property
    def message_routes(self) -> list[MessageRoute]:
        """The routes client messages can take (all but `$connect` and `$disconnect`)."""
        return [r for r in self.routes if r.key not in ("$connect", "$disconnect")]
    push: APIPush | None = Field(
        None, description="Let backends push to this API's connections through the Gateway's push listener "
        "(docs/push.md). Pushes run through the server-to-client stage like upstream messages.")

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return _host_names(value)

    @field_validator("match_headers")
    @classmethod
    def _header_names_lower(cls, value: dict[str, str]) -> dict[str, str]:
        lowered: dict[str, str] = {}
        for name, wanted in value.items():
            if name.lower() in lowered:
                raise ValueError(f"header {name!r} is required twice (header names are case-insensitive)")
            lowered[name.lower()] = wanted
        return lowered

    def match_conditions(self) -> tuple[tuple[str, str, str], ...]:
        """Header and query conditions as sorted (kind, name, value): equal tuples always match the same requests."""
        return tuple(sorted([("header", n, v) for n, v in self.match_headers.items()]
                            + [("query", n, v) for n, v in self.match_query.items()]))

    @model_validator(mode="after")
    def _strip_needs_prefix(self) -> API:
        if self.strip_prefix and self.match != "prefix":
            raise ValueError("`strip_prefix` needs `match: prefix`: an exact path leaves nothing to keep")
        return self

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # `version: 1.0` in YAML is a float; operators mean the label "1.0".
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# -------------------------------------------------------------- Application


APIKey = Annotated[
    str | EnvKey,
    Field(
        description="A key in plain text (example only), `sha256:<64 hex digits>` (the hash of the key), "
        "or `{env: VARIABLE}`."
    ),
]


class BasicCredential(Strict):
    username: str = Field(pattern=r"^[^:\x00-\x1f]+$", description="HTTP Basic user name (no ':').")
    password: APIKey = Field(
        description="A bcrypt (`$2b$...`) or argon2 (`$argon2id$...`) hash (needs `wsgate[hashes]`), "
        "`{env: VARIABLE}`, `sha256:<64 hex digits>` (a fast hash: warned) or plain text (example only)."
    )


class CertificateIdentifier(Strict):
    """A client certificate (mTLS) that names the application: by subject CN, a SAN, or its fingerprint."""

    subject: str | None = Field(None, min_length=1, description="The certificate subject's common name (CN).")
    san: str | None = Field(
        None, min_length=1, description="A subjectAltName value: a DNS name, e-mail address, URI or IP address."
    )
    fingerprint: str | None = Field(
        None,
        pattern=r"^(sha256:)?([0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2}$",
        description="SHA-256 of the DER certificate, hex (`sha256:` prefix and `:` separators optional).",
    )

    @model_validator(mode="after")
    def _one_of(self) -> CertificateIdentifier:
        if sum(v is not None for v in (self.subject, self.san, self.fingerprint)) != 1:
            raise ValueError("a certificate identifier has exactly one of `subject`, `san` or `fingerprint`")
        return self

    def key(self) -> str:
        """The form the index and revocation compare: ``subject:cn``, ``san:value`` or ``sha256:hex``."""
        if self.subject is not None:
            return f"subject:{self.subject}"
        if self.san is not None:
            return f"san:{self.san.lower()}"
        assert self.fingerprint is not None
        return "sha256:" + self.fingerprint.lower().removeprefix("sha256:").replace(":", "")


class Identifiers(Strict):
    api_keys: list[APIKey] = Field(default_factory=list)
    hostnames: list[str] = Field(default_factory=list, description="Client host names (reverse DNS of the peer).")
    ips: list[str] = Field(default_factory=list, description="Client addresses or CIDR networks.")
    jwt_clients: list[str] = Field(
        default_factory=list, description="Values of the identify policy's application claim (`azp`/`client_id`)."
    )
    basic: list[BasicCredential] = Field(default_factory=list, description="HTTP Basic user names and passwords.")
    certificates: list[CertificateIdentifier] = Field(
        default_factory=list, description="Client certificates (mTLS, `identify: by: [certificate]`)."
    )


class Application(Versioned):
    """A consumer of APIs, identified by key, hostname or address."""

    kind: Literal["Application"]
    name: Name
    previous_names: list[Name] = Field(
        default_factory=list,
        description="Names this application had before, oldest first: a reload that finds the old name gone and this "
        "one new is a rename (`plan`: renamed, no connection disrupted), not a removal and a creation. Its live "
        "connections, identified by the same credentials, carry over.")
    description: str = ""
    identifiers: Identifiers = Identifiers()
    apis: list[Name] = Field(default_factory=list, description="Names of the APIs this application may use.")


# --------------------------------------------------------------- EchoServer


class EchoContext(Strict):
    path: str = Field(pattern=r"^/\S*$", description="URL context, e.g. `/api/demo/`.")
    mode: Literal["room", "echo"] = Field(
        "room", description="`room`: broadcast to every client of the context; `echo`: back to the sender only."
    )
    broadcast_time: bool | None = Field(
        None, description="Send the server time every interval; default: when the path contains `broadcast`."
    )
    interval: Seconds = Field(1.0, description="Seconds between server-time messages.")
    published: bool = Field(True, description="An unpublished context answers 404 until published.")


class EchoServer(Versioned):
    """The native demo backend: an echo broadcaster."""

    kind: Literal["EchoServer"]
    name: Name
    description: str = ""
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    contexts: list[EchoContext] = Field(min_length=1)
    control: bool = Field(True, description="Serve `startDemoAPI` / `stopDemoAPI?relativeURI=...` over HTTP.")
    max_message_size: PositiveInt = 2**20
    max_queue: PositiveInt = Field(256, description="Messages queued per client before it is closed as too slow.")


# ------------------------------------------------------------------ Gateway


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or `localhost`) only ever accepts connections from this machine."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


class Admin(Strict):
    """The admin listener. `/healthz` and `/readyz` are always open (probes); with a token, every other
    endpoint (`/config`, `/connections`, `/metrics`, `/reload`) wants `Authorization: Bearer TOKEN`."""

    host: str = Field("127.0.0.1", description="Address to bind; anything but loopback needs a token.")
    port: int = Field(9900, ge=0, le=65535)
    enabled: bool = True
    token: EnvKey | None = Field(None, description="`{env: VARIABLE}` holding the bearer token.")
    token_file: str | None = Field(
        None, description="File holding the bearer token (surrounding whitespace ignored), relative to the "
        "declaring file. Read at start."
    )
    tls: TLSFiles | None = Field(None, description="Serve the admin endpoints over HTTPS with this certificate.")
    unready_after_failed_reload: bool = Field(
        False, description="`/readyz` answers 503 while the last reload failed (the last good config keeps serving): "
        "a rollout then sees a replica stuck on an old config. Off: a failed reload shows in `/readyz`'s body "
        "and `wsgate_config_info` only.")

    @model_validator(mode="after")
    def _one_token_source(self) -> Admin:
        if self.token is not None and self.token_file is not None:
            raise ValueError("`token_file` and `token` both set: an admin token comes from one of them")
        return self


class PushListener(Strict):
    """The push API's listener: backends send to, close and group the clients' connections (docs/push.md)."""

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(9910, ge=0, le=65535)
    enabled: bool = True
    tls: TLSFiles | None = Field(
        None, description="Serve HTTPS; with `client_certificates`, backends need a certificate too (mTLS).")


class MemoryState(Strict):
    """Counts kept in each process: one process, nothing to reach (the default)."""

    backend: Literal["memory"] = "memory"


class RedisState(Strict):
    """Counts shared by every worker and instance through one Redis."""

    backend: Literal["redis"]
    url: str | EnvKey = Field(
        description="`redis://[user[:password]@]host:port[/db]`, `rediss://...` (TLS) or `unix:///path`; or "
        "`{env: VARIABLE}` holding it (keep passwords out of git).")
    password: EnvKey | None = Field(None, description="`{env: VARIABLE}` holding the password, if not in the URL.")
    ca: str | None = Field(None, description="CA bundle for `rediss://`, relative to the file that declares it "
                           "(default: the system's CAs).")
    heartbeat: Seconds = Field(2.0, description="Seconds between lease renewals; the slots of an instance that "
                               "died come free within twice this.")
    timeout: Seconds = Field(0.5, description="Seconds a Redis command may take before the backend counts as down.")
    key_prefix: str = Field("wsgate", pattern=r"^[A-Za-z0-9._-]{1,64}$",
                            description="Prefix of every key; gateways that share limits share it.")


StateSettings = Annotated[MemoryState | RedisState, Field(discriminator="backend")]


class Requirement(Strict):
    """An organisation rule: what every API it applies to must have."""

    name: Name = Field(description="The rule's name, shown in each error (`identified`, `tls-only`).")
    description: str = ""
    selector: dict[LabelKey, str] = Field(
        default_factory=dict, description="Only APIs with these labels must meet it; empty: every API.")
    policies: list[Literal["identify", "throttle", "transform", "log-invocation", "routing", "origin", "rate-limit",
                           "validate-messages"]] = Field(
        default_factory=list, description="Policy types each API's chain must hold (`[identify, log-invocation]`).")
    tls_ports: bool = Field(False, description="Every port of the API serves TLS (wss://).")
    labels: list[LabelKey] = Field(default_factory=list, description="Label keys each API must carry (`[team]`).")
    max_message_size: PositiveInt | None = Field(
        None, description="`limits.max_message_size` must be set and at most this many bytes.")

    @model_validator(mode="after")
    def _requires_something(self) -> Requirement:
        if not (self.policies or self.tls_ports or self.labels or self.max_message_size):
            raise ValueError("a requirement needs `policies`, `tls_ports`, `labels` or `max_message_size`")
        return self


class Gateway(Versioned):
    """Process-wide settings; at most one per config."""

    kind: Literal["Gateway"]
    name: Name
    admin: Admin = Admin()
    shutdown_grace: float = Field(
        20.0, ge=0, description="Seconds live connections may go on after SIGTERM (readiness is 503 and the listeners "
        "are closed meanwhile) before the rest are closed with 1001; a second signal ends the grace at once.")
    shutdown_timeout: Seconds = Field(10.0, description="Seconds to wait for connections to close on stop.")
    drain_grace: Seconds = Field(30.0, description="Seconds a connection of a removed route may finish on reload.")
    state: StateSettings = Field(MemoryState(), description="Where throttle counts live: `memory` (each process) "
                                 "or `redis` (shared by every worker and instance).")
    push: PushListener | None = Field(
        None, description="Where the push API listens; APIs opt in with their own `push:` block.")
    log_directories: list[str] = Field(
        default_factory=list,
        description="Directories outside the config tree where log-invocation files may be written (absolute, or "
        "relative to this file). Without them, log files must stay inside the config tree.",
    )
    log_format: Literal["json", "console", "auto"] = "auto"
    requirements: list[Requirement] = Field(
        default_factory=list,
        description="Organisation rules every API (or every API a `selector` picks) must meet; `validate` reports "
        "each API that breaks one as an error naming the rule (WSG135).")


Resource = Annotated[Port | API | Application | EchoServer | Gateway, Field(discriminator="kind")]
KINDS: dict[str, type[BaseModel]] = {
    "Port": Port,
    "API": API,
    "Application": Application,
    "EchoServer": EchoServer,
    "Gateway": Gateway,
}
