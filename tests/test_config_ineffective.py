"""Settings that can never take effect: each class has two realistic cases, each asserting code, line and column;
and diagnostics name the field (or the certificate pair) that is wrong."""

from __future__ import annotations

import trustme
from config_helpers import API, APP, PORT, base, found, run_check, write

from gateway.build.pipeline import build

GATEWAY = "kind: Gateway\nname: gw\n"


def warned(result, code):
    return [f for f in found(result) if f[0] == code]


# ------------------------------------------------------------- glob paths (WSG217)


def test_glob_star_in_a_prefix_path_is_literal(tmp_path):
    """`/websocket/EchoWS/*` with `match: prefix` serves only paths under a literal '*': WSG217 at the star."""
    base(tmp_path, api=API.replace("path: /websocket/EchoWS/1.0", "path: /websocket/EchoWS/*\nmatch: prefix"))
    result = run_check(tmp_path)
    assert warned(result, "WSG217") == [("WSG217", "echo.yaml", 3, 25)]
    assert "path: /websocket/EchoWS`" in result.diagnostics[0].hint


def test_glob_star_in_an_exact_path_and_in_an_echo_context(tmp_path):
    """`/chat/**` on an exact route and an echo context `/api/*` are both literal: WSG217 at each star."""
    base(tmp_path, api=API.replace("path: /websocket/EchoWS/1.0", "path: /chat/**"))
    write(tmp_path, "echo.yaml", "kind: EchoServer\nname: b\nport: 8765\ncontexts:\n  - path: /api/*\n")
    result = run_check(tmp_path)
    assert warned(result, "WSG217") == [("WSG217", "echo.yaml", 3, 13), ("WSG217", "echo.yaml", 5, 16)]
    assert "match: prefix" in result.diagnostics[0].hint


# ------------------------------------------------------- health check timing (WSG218)


def test_health_check_timeout_equal_to_interval(tmp_path):
    """timeout 5 with interval 5: WSG218 at the timeout, noting the interval."""
    hc = "  health_check:\n    interval: 5\n    timeout: 5\npolicies:"
    base(tmp_path, api=API.replace("policies:", hc))
    result = run_check(tmp_path)
    assert warned(result, "WSG218") == [("WSG218", "echo.yaml", 10, 14)]
    assert result.diagnostics[0].related[0].location.line == 9


def test_health_check_short_interval_below_default_timeout(tmp_path):
    """Only `interval: 1` written: the default 2 s timeout is longer, so WSG218 points at the interval."""
    base(tmp_path, api=API.replace("policies:", "  health_check: {type: tcp, interval: 1}\npolicies:"))
    assert warned(run_check(tmp_path), "WSG218") == [("WSG218", "echo.yaml", 8, 39)]


# --------------------------------------------------- a setting another overrides (WSG230)

TWO = API.replace("    - url: ws://backend.internal:8765/api/demo/",
                  "    - url: ws://backend.internal:8765/api/demo/\n    - url: ws://backend2.internal:8765/api/demo/")


def test_hash_key_while_hashing_on_the_client_address(tmp_path):
    """consistent-hash on client_ip with a `hash_key`: the key is never read (WSG230 at hash_key, note at hash_on)."""
    base(tmp_path, api=TWO + "  - type: routing\n    strategy: consistent-hash\n    hash_on: client_ip\n"
         "    hash_key: X-User\n")
    result = run_check(tmp_path)
    assert warned(result, "WSG230") == [("WSG230", "echo.yaml", 14, 5)]
    assert result.diagnostics[0].related[0].location.line == 13


def test_hash_settings_under_round_robin(tmp_path):
    """`hash_on: header` under round-robin: hash_on is read by consistent-hash only (WSG230 at hash_on)."""
    base(tmp_path, api=TWO + "  - type: routing\n    strategy: round-robin\n    hash_on: header\n"
         "    hash_key: X-User\n")
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 13, 5)]


def test_weights_under_straight_through_and_on_a_single_endpoint(tmp_path):
    """Weights with no routing policy (straight-through) and on a lone endpoint are never read: WSG230 at weight."""
    base(tmp_path, api=TWO.replace("backend2.internal:8765/api/demo/", "backend2.internal:8765/api/demo/\n"
                                   "      weight: 3"))
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 9, 7)]
    base(tmp_path, api=API.replace("api/demo/\n", "api/demo/\n      weight: 5\n"))
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 8, 7)]


def test_weight_zero_is_one_error_not_a_round_robin_warning(tmp_path):
    """`weight: 0` on one of two endpoints is WSG105 at the weight, without a spurious single-endpoint WSG209."""
    api = TWO.replace("backend2.internal:8765/api/demo/", "backend2.internal:8765/api/demo/\n      weight: 0")
    base(tmp_path, api=api + "  - type: routing\n    strategy: round-robin\n")
    assert found(run_check(tmp_path)) == [("WSG105", "echo.yaml", 9, 15)]


def test_failover_retries_and_passive_tuning_with_nothing_to_apply_to(tmp_path):
    """Retries with one endpoint, and passive `failures` with passive checks off: WSG230 at each."""
    up = "  failover: {retries: 3}\n  passive:\n    enabled: false\n    failures: 5\npolicies:"
    base(tmp_path, api=API.replace("policies:", up))
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 8, 14), ("WSG230", "echo.yaml", 11, 5)]


def test_keepalive_timeout_without_pings(tmp_path):
    """`keepalive: {interval: null, timeout: 5}`: nothing waits for a pong (WSG230 at timeout)."""
    base(tmp_path, api=API.replace("policies:", "keepalive:\n  interval: null\n  timeout: 5\npolicies:"))
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 10, 3)]


def test_upstream_tls_settings_on_ws_endpoints(tmp_path):
    """`verify: false` or `server_hostname` on ws:// endpoints is never used: WSG208 (not a WSG206 about
    verification)."""
    base(tmp_path, api=API.replace("policies:", "  tls:\n    verify: false\npolicies:"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG208", "echo.yaml", 9, 5)]
    base(tmp_path, api=API.replace("policies:", "  tls: {server_hostname: backend.example}\npolicies:"))
    assert found(run_check(tmp_path)) == [("WSG208", "echo.yaml", 8, 9)]


def test_identify_options_for_methods_not_listed(tmp_path):
    """`api_key_header: false` with `by: [ip]` and `hostname_lookup_timeout` without hostname: WSG230 each."""
    base(tmp_path, api=API + "    by: [ip]\n    api_key_header: false\n")
    result = run_check(tmp_path)
    # The application's api_keys are never compared either: its only API identifies by ip.
    assert warned(result, "WSG230") == [("WSG230", "echo.yaml", 11, 5), ("WSG230", "demo.yaml", 4, 3)]
    base(tmp_path, api=API + "    by: [api_key]\n    hostname_lookup_timeout: 1\n")
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 11, 5)]


def test_on_state_error_without_shared_state(tmp_path):
    """A throttle's `on_state_error: refuse` with memory state (declared, or no Gateway): WSG230 at the field."""
    api = API + "  - type: throttle\n    max_connections: 10\n    on_state_error: refuse\n"
    base(tmp_path, api=api)
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 12, 5)]
    write(tmp_path, "gateway.yaml", GATEWAY + "state:\n  backend: memory\n")
    result = run_check(tmp_path)
    assert warned(result, "WSG230") == [("WSG230", "echo.yaml", 12, 5)]
    assert result.diagnostics[0].related[0].location.file.endswith("gateway.yaml")


def test_log_options_that_shape_nothing(tmp_path):
    """`compress` and `mask` with no stored messages, `backups` with no file: WSG230 at each."""
    api = API + ("  - type: log-invocation\n    compress: true\n    mask:\n      - json_field: password\n"
                 "    backups: 2\n")
    base(tmp_path, api=api)
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 11, 5), ("WSG230", "echo.yaml", 12, 5),
                                                     ("WSG230", "echo.yaml", 14, 5)]


def test_validation_options_nothing_reads(tmp_path):
    """`on_violation` with no direction enforcing, and a discriminator no schema fixes: WSG230 at each."""
    messages = ("messages:\n  - name: hello\n    origin: client\n    schema: {type: object}\n")
    api = messages + API + ("  - type: validate-messages\n    client: log\n    on_violation: drop\n"
                            "    discriminator: type\n")
    base(tmp_path, api=api)
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 16, 5), ("WSG230", "echo.yaml", 17, 5)]


def test_discriminator_fixed_by_a_schema_is_fine(tmp_path):
    """A discriminator that a schema fixes with `const` gets no warning (no false positive on the valid form)."""
    messages = ("messages:\n  - name: hello\n    origin: client\n"
                "    schema: {type: object, properties: {type: {const: hello}}}\n")
    base(tmp_path, api=messages + API + "  - type: validate-messages\n    discriminator: type\n")
    assert warned(run_check(tmp_path), "WSG230") == []
    # Through a bundled `$ref` (as `wsgate import` writes AsyncAPI schemas), to the schema or to the property.
    for schema in ("{$ref: '#/$defs/Hello', $defs: {Hello: {type: object, properties: {type: {const: hello}}}}}",
                   "{type: object, properties: {type: {$ref: '#/$defs/T'}}, $defs: {T: {enum: [hello]}}}"):
        messages = f"messages:\n  - name: hello\n    origin: client\n    schema: {schema}\n"
        base(tmp_path, api=messages + API + "  - type: validate-messages\n    discriminator: type\n")
        assert warned(run_check(tmp_path), "WSG230") == [], schema


def test_json_schema_on_a_binary_message(tmp_path):
    """A schema on a `type: binary` message is never applied: WSG230 at `schema`, noting the type."""
    messages = "messages:\n  - name: frame\n    origin: server\n    type: binary\n    schema: {type: object}\n"
    base(tmp_path, api=messages + API)
    result = run_check(tmp_path)
    assert warned(result, "WSG230") == [("WSG230", "echo.yaml", 5, 5)]
    assert result.diagnostics[0].related[0].location.line == 4


def test_application_identifiers_no_api_identifies_by(tmp_path):
    """Basic users and ips on an application whose API identifies by api_key only: WSG230 at each list."""
    app = APP.replace("apis:", "  basic:\n    - {username: u, password: {env: P}}\n  ips: [10.0.0.1]\napis:")
    base(tmp_path, app=app)
    assert warned(run_check(tmp_path, env={"P": "x"}), "WSG230") == [("WSG230", "demo.yaml", 6, 3),
                                                                     ("WSG230", "demo.yaml", 8, 3)]


def test_echo_interval_without_broadcast_and_unpublished_without_control(tmp_path):
    """An interval on a context that never broadcasts, and an unpublished context with `control: false`: WSG230."""
    write(tmp_path, "echo.yaml", "kind: EchoServer\nname: b\nport: 8765\ncontrol: false\ncontexts:\n"
          "  - path: /api/demo/\n    interval: 2\n  - path: /later/\n    published: false\n")
    base(tmp_path)
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 7, 5), ("WSG230", "echo.yaml", 9, 5)]


def test_admin_settings_with_admin_disabled(tmp_path):
    """A token and a port under `admin: {enabled: false}`: WSG230 at the first, naming both."""
    write(tmp_path, "gateway.yaml", GATEWAY + "admin:\n  enabled: false\n  port: 9901\n  token: {env: T}\n")
    base(tmp_path)
    result = run_check(tmp_path)
    assert warned(result, "WSG230") == [("WSG230", "gateway.yaml", 5, 3)]
    assert "port, token" in result.diagnostics[0].summary


# ----------------------------------------------------- per application before identify (WSG231)


def test_throttle_per_application_before_identify(tmp_path):
    """A per-application throttle placed before identify counts everyone as anonymous: WSG231 at `per`."""
    api = API.replace("  - type: identify\n", "  - type: throttle\n    max_connections: 2\n    per: application\n"
                      "  - type: identify\n")
    base(tmp_path, api=api)
    result = run_check(tmp_path)
    assert warned(result, "WSG231") == [("WSG231", "echo.yaml", 11, 10)]
    assert result.diagnostics[0].related[0].location.line == 12


def test_rate_limit_per_application_without_identify(tmp_path):
    """A per-application rate-limit on an API with no identify at all: WSG231 at `per`; after identify it is fine."""
    api = API.replace("  - type: identify\n", "  - type: rate-limit\n    per: application\n"
                      "    messages_per_second: 5\n")
    base(tmp_path, api=api)
    assert warned(run_check(tmp_path), "WSG231") == [("WSG231", "echo.yaml", 10, 10)]
    base(tmp_path, api=API + "  - type: throttle\n    max_connections: 2\n    per: application\n")
    assert warned(run_check(tmp_path), "WSG231") == []


# ------------------------------------------------------ certificate subject as a DN (WSG133)


def test_certificate_subject_written_as_a_distinguished_name(tmp_path):
    """`subject: CN=client1,O=Acme` never matches (only the CN is compared): WSG133 at the value, hinting the CN."""
    app = APP.replace("apis:", "  certificates:\n    - subject: CN=client1,O=Acme\napis:")
    base(tmp_path, app=app)
    result = run_check(tmp_path)
    assert [f for f in found(result) if f[0] == "WSG133"] == [("WSG133", "demo.yaml", 7, 16)]
    assert not result.ok and "subject: client1" in result.errors[0].hint


def test_certificate_subject_in_slash_form_and_plain_cn(tmp_path):
    """`O=Acme, CN=x` is refused too; a plain common name with a comma-free value is fine."""
    app = APP.replace("apis:", "  certificates:\n    - subject: 'O=Acme, CN=gw-client'\napis:")
    base(tmp_path, app=app)
    assert [f for f in found(run_check(tmp_path)) if f[0] == "WSG133"] == [("WSG133", "demo.yaml", 7, 16)]
    base(tmp_path, app=APP.replace("apis:", "  certificates:\n    - subject: gw-client\napis:"))
    assert [f for f in found(run_check(tmp_path)) if f[0] == "WSG133"] == []


# -------------------------------------------------------- diagnostics at the wrong field


def test_strip_prefix_without_prefix_match_points_at_strip_prefix(tmp_path):
    """`strip_prefix: true` on an exact route is reported at `strip_prefix`, not at the document's start."""
    base(tmp_path, api=API.replace("ports: [default]", "ports: [default]\nstrip_prefix: true"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG108", "echo.yaml", 5, 15)]
    assert "Value error" not in result.diagnostics[0].summary


def test_hash_on_header_without_key_points_at_hash_on(tmp_path):
    """`hash_on: header` without `hash_key` is reported at `hash_on`."""
    base(tmp_path, api=TWO + "  - type: routing\n    strategy: consistent-hash\n    hash_on: header\n")
    assert found(run_check(tmp_path)) == [("WSG108", "echo.yaml", 13, 14)]


def test_sni_certificate_with_the_wrong_key_names_the_pair(tmp_path):
    """An SNI certificate paired with another certificate's key is WSG170 at that SNI `cert`, naming the pair."""
    ca = trustme.CA()
    main, b, c = ca.issue_cert("a.example"), ca.issue_cert("b.example"), ca.issue_cert("c.example")
    main.cert_chain_pems[0].write_to_path(str(tmp_path / "a.pem"))
    main.private_key_pem.write_to_path(str(tmp_path / "a.key"))
    b.cert_chain_pems[0].write_to_path(str(tmp_path / "b.pem"))
    c.private_key_pem.write_to_path(str(tmp_path / "c.key"))
    tls = "tls:\n  cert: a.pem\n  key: a.key\n  sni:\n    - hosts: [b.example]\n      cert: b.pem\n      key: c.key\n"
    base(tmp_path, port=PORT + tls)
    result = build([tmp_path], env={})
    assert [f for f in found(result) if f[0] == "WSG170"] == [("WSG170", "ports.yaml", 9, 13)]
    summary = next(d.summary for d in result.diagnostics if d.code == "WSG170")
    assert "SNI certificate 1 (b.example)" in summary and "b.pem" in summary and "c.key" in summary


def test_message_records_under_on_failure_and_a_ca_file_with_verification_off(tmp_path):
    """`store_client_messages` under `frequency: on-failure` (no message record is written), and a `ca_file`
    with `verify: false` on a wss upstream: WSG230 at each."""
    api = API + "  - type: log-invocation\n    frequency: on-failure\n    store_client_messages: true\n"
    base(tmp_path, api=api)
    result = run_check(tmp_path)
    assert warned(result, "WSG230") == [("WSG230", "echo.yaml", 12, 5)]
    assert result.diagnostics[0].related[0].location.line == 11
    write(tmp_path, "apis/ca.pem", "unused\n")
    wss = API.replace("ws://backend.internal", "wss://backend.internal").replace(
        "policies:", "  tls:\n    ca_file: ca.pem\n    verify: false\npolicies:")
    base(tmp_path, api=wss)
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 9, 5)]


def test_message_max_size_above_the_api_limit(tmp_path):
    """A definition allowing 2 MiB on an API that closes at 64 KiB (written), and one above the 1 MiB default:
    WSG230 at `max_size`."""
    messages = "messages:\n  - name: blob\n    origin: client\n    max_size: 2097152\n"
    base(tmp_path, api=messages + API + "limits:\n  max_message_size: 65536\n")
    result = run_check(tmp_path)
    assert warned(result, "WSG230") == [("WSG230", "echo.yaml", 4, 5)]
    assert result.diagnostics[0].related[0].location.line == 15
    base(tmp_path, api=messages + API)
    assert warned(run_check(tmp_path), "WSG230") == [("WSG230", "echo.yaml", 4, 5)]


def test_model_errors_point_at_the_field_they_name(tmp_path):
    """An upstream `cert` without `key` is reported at `cert`; an admin `token_file` beside `token` at
    `token_file` (each model check names its field first, and the diagnostic goes there)."""
    base(tmp_path, api=API.replace("policies:", "  tls:\n    cert: c.pem\npolicies:"))
    assert found(run_check(tmp_path)) == [("WSG108", "echo.yaml", 9, 11)]
    base(tmp_path)
    write(tmp_path, "gateway.yaml", GATEWAY + "admin:\n  token: {env: T}\n  token_file: t.txt\n")
    assert [f for f in found(run_check(tmp_path, env={"T": "x"})) if f[0] == "WSG108"] == [
        ("WSG108", "gateway.yaml", 5, 15)]
