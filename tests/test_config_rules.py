"""Cross-resource rules: each one has a failing example with its exact code, line and column."""

from __future__ import annotations

import hashlib
import sys

from config_helpers import API, APP, PORT, base, codes, found, run_check, write

from gateway.config import check

ECHO = """\
kind: EchoServer
name: backend
port: 8765
contexts:
  - path: /api/demo/
  - path: /echo/
"""


def test_valid_base_config_has_no_diagnostics(tmp_path):
    """The helpers' base config is clean, so every other test shows only its own problem."""
    base(tmp_path)
    result = run_check(tmp_path)
    assert result.ok and result.diagnostics == []


def test_duplicate_names_show_both_locations(tmp_path):
    """Two Ports named alike: WSG110 at the second name, noting the first."""
    base(tmp_path, port=PORT + "---\nkind: Port\nname: default\nport: 9000\n")
    result = run_check(tmp_path)
    assert found(result) == [("WSG110", "ports.yaml", 6, 7)]
    assert (result.diagnostics[0].related[0].location.line, result.diagnostics[0].related[0].location.col) == (2, 7)


def test_same_path_same_port(tmp_path):
    """Two APIs at one path on one port: WSG111 at the second path."""
    base(tmp_path)
    write(tmp_path, "apis/other.yaml", API.replace("name: EchoWS", "name: Other"))
    write(tmp_path, "apps/other.yaml", APP.replace("demo-app", "other-app").replace("[EchoWS]", "[Other]")
          .replace("434f", "0000"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG111", "other.yaml", 3, 7)]


def test_unknown_port_reference(tmp_path):
    """An API on an undeclared port: WSG112 at the list item, with a did-you-mean."""
    base(tmp_path, api=API.replace("ports: [default]", "ports: [defualt]"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG112", "echo.yaml", 4, 9)]
    assert result.diagnostics[0].hint == "did you mean 'default'?"


def test_unknown_api_reference(tmp_path):
    """An application registered to an undeclared API: WSG113."""
    base(tmp_path, app=APP.replace("apis: [EchoWS]", "apis:\n  - EchoWS\n  - EchoW"))
    assert found(run_check(tmp_path)) == [("WSG113", "demo.yaml", 8, 5)]


def test_references_of_a_document_that_fails_its_schema_are_still_checked(tmp_path):
    """A misspelt field and an unknown port in one API (and an unknown API in a broken application) are all
    reported in one run, not one after another."""
    api = API.replace("ports: [default]", "ports: [defualt]").replace("policies:", "polices:")
    app = APP.replace("apis: [EchoWS]", "apis: [EchoW]\ncolour: red")
    base(tmp_path, api=api, app=app)
    result = run_check(tmp_path)
    assert ("WSG112", "echo.yaml", 4, 9) in found(result)
    assert ("WSG113", "demo.yaml", 6, 8) in found(result)
    assert codes(result).count("WSG100") == 2  # the unknown fields, each where it is written


def test_reference_to_an_invalid_resource_is_not_unknown(tmp_path):
    """A port whose own document fails is still known by name: only its own error is shown."""
    base(tmp_path, port="kind: Port\nname: default\nport: nope\n")
    assert codes(run_check(tmp_path)) == ["WSG101"]


def test_trailing_slash_mismatch_with_the_backend_context(tmp_path):
    """The tutorial's classic error: the native URL lacks the context's trailing '/' (WSG104, caret at the end)."""
    base(tmp_path, api=API.replace("ws://backend.internal:8765/api/demo/", "ws://localhost:8765/api/demo"))
    write(tmp_path, "echo.yaml", ECHO)
    result = run_check(tmp_path)
    assert found(result) == [("WSG104", "echo.yaml", 7, 40)]
    assert result.diagnostics[0].hint == "write the upstream URL's path as /api/demo/"


def test_trailing_slash_the_other_way_round(tmp_path):
    """A native URL with a '/' the context does not have is WSG104 too, caret on the slash."""
    base(tmp_path, api=API.replace("ws://backend.internal:8765/api/demo/", "ws://127.0.0.1:8765/live/"))
    write(tmp_path, "echo.yaml", ECHO + "  - path: /live\n")
    assert found(run_check(tmp_path)) == [("WSG104", "echo.yaml", 7, 36)]


def test_unknown_backend_context(tmp_path):
    """An upstream on a declared echo server must name one of its contexts (WSG127)."""
    base(tmp_path, api=API.replace("ws://backend.internal:8765/api/demo/", "ws://localhost:8765/nothing/"))
    write(tmp_path, "echo.yaml", ECHO)
    assert found(run_check(tmp_path)) == [("WSG127", "echo.yaml", 7, 12)]


def test_upstream_scheme(tmp_path):
    """An http:// upstream is WSG114 with a hint to use ws://."""
    base(tmp_path, api=API.replace("ws://backend", "http://backend"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG114", "echo.yaml", 7, 12)]
    assert result.diagnostics[0].hint.startswith("use ws://")


def test_upstream_fragment_and_query(tmp_path):
    """A fragment is an error (WSG121), a query a warning (WSG207), each at its character."""
    base(tmp_path, api=API.replace("/api/demo/", "/api/demo/?token=1#top"))
    assert found(run_check(tmp_path)) == [("WSG207", "echo.yaml", 7, 48), ("WSG121", "echo.yaml", 7, 56)]


def test_upstream_without_host(tmp_path):
    """`ws:///path` is WSG121."""
    base(tmp_path, api=API.replace("ws://backend.internal:8765/api/demo/", "ws:///api/demo/"))
    assert codes(run_check(tmp_path)) == ["WSG121"]


def test_api_path_with_query(tmp_path):
    """An API path containing '?' is WSG122 at the '?'."""
    base(tmp_path, api=API.replace("path: /websocket/EchoWS/1.0", "path: /websocket/EchoWS?v=1"))
    assert found(run_check(tmp_path)) == [("WSG122", "echo.yaml", 3, 24)]


def test_two_listeners_on_one_port(tmp_path):
    """A Port and an EchoServer on one port number clash (WSG115), a wildcard host included."""
    base(tmp_path)
    write(tmp_path, "echo.yaml", ECHO.replace("8765", "8082"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG115", "echo.yaml", 3, 7)]
    assert result.diagnostics[0].related[0].location.file.endswith("ports.yaml")


def test_listeners_on_different_hosts_do_not_clash(tmp_path):
    """Two Ports on one number but different specific hosts are fine."""
    port = ("kind: Port\nname: default\nport: 8082\nhost: 127.0.0.1\n---\n"
            "kind: Port\nname: b\nport: 8082\nhost: 127.0.0.2\n")
    base(tmp_path, port=port)
    assert run_check(tmp_path).ok


def test_admin_port_clash(tmp_path):
    """The Gateway's admin endpoint on a Port's number clashes too (and 0.0.0.0 without a token is WSG180)."""
    base(tmp_path)
    write(tmp_path, "gw.yaml", "kind: Gateway\nname: g\nadmin:\n  port: 8082\n  host: 0.0.0.0\n")
    assert found(run_check(tmp_path)) == [("WSG115", "gw.yaml", 4, 9), ("WSG180", "gw.yaml", 5, 9)]


def test_disabled_port_in_use_warns(tmp_path):
    """An API on a disabled port: warning WSG202 at the list item."""
    base(tmp_path, port=PORT + "enabled: false\n")
    result = run_check(tmp_path)
    assert result.ok
    assert found(result) == [("WSG202", "echo.yaml", 4, 9)]


def test_key_claimed_by_two_applications_even_hashed(tmp_path):
    """The same key, once plain and once as its hash, in two applications: WSG116."""
    digest = hashlib.sha256(b"shared-key").hexdigest()
    base(tmp_path, app=APP.replace("sha256:434f4cad53d8c1fcbb91e478d081844b190f84c8a9ac3975e671aa6c9e7cc93c",
                                   "shared-key"))
    write(tmp_path, "apps/other.yaml", APP.replace("demo-app", "other").replace(
        "434f4cad53d8c1fcbb91e478d081844b190f84c8a9ac3975e671aa6c9e7cc93c", digest))
    result = run_check(tmp_path)
    assert ("WSG116", "other.yaml", 5, 7) in found(result)
    assert ("WSG200", "demo.yaml", 5, 7) in found(result)


def test_key_from_env_compared_by_value(tmp_path):
    """An env key whose value equals another application's key is a clash too."""
    base(tmp_path, app=APP.replace("- sha256:434f4cad53d8c1fcbb91e478d081844b190f84c8a9ac3975e671aa6c9e7cc93c",
                                   "- env: KEY_A"))
    write(tmp_path, "apps/other.yaml", APP.replace("demo-app", "other").replace(
        "- sha256:434f4cad53d8c1fcbb91e478d081844b190f84c8a9ac3975e671aa6c9e7cc93c", "- env: KEY_B"))
    result = run_check(tmp_path, env={"KEY_A": "same", "KEY_B": "same"})
    assert found(result) == [("WSG116", "other.yaml", 5, 7)]


def test_plaintext_key_and_unset_env_warn(tmp_path):
    """A plain key is WSG200; an unset variable is WSG203 at the variable name."""
    base(tmp_path, app=APP + "---\nkind: Application\nname: b\nidentifiers:\n"
                            "  api_keys: [plain, {env: NOPE}]\napis: [EchoWS]\n")
    assert found(run_check(tmp_path)) == [("WSG200", "demo.yaml", 11, 14), ("WSG203", "demo.yaml", 11, 27)]


def test_malformed_hash(tmp_path):
    """`sha256:` with too few or uppercase digits is WSG125."""
    base(tmp_path, app=APP.replace("434f4cad", "434F4CAD"))
    assert found(run_check(tmp_path)) == [("WSG125", "demo.yaml", 5, 7)]


def test_transform_callable_not_importable(tmp_path):
    """A transform whose module or function does not exist is WSG117 at the callable."""
    write(tmp_path, "transforms/mine.py", "def upper(message):\n    return message.payload.upper()\n")
    write(tmp_path, "transforms/__init__.py", "")
    api = API + "  - type: transform\n    stage: client\n    callable: transforms.mine:uper\n"
    api += "  - type: transform\n    stage: server\n    callable: transforms.missing:upper\n"
    base(tmp_path, api=api)
    # Compared with what was there before: a gateway an earlier test ran may have imported its own `transforms`.
    before = {name for name in sys.modules if name.startswith("transforms")}
    for result in (run_check(tmp_path), check([tmp_path], env={}, import_transforms=True)):
        assert found(result) == [("WSG117", "echo.yaml", 12, 15), ("WSG117", "echo.yaml", 15, 15)]
        assert result.diagnostics[0].hint == "did you mean 'upper'?"
    assert {name for name in sys.modules if name.startswith("transforms")} == before


def test_transform_callable_importable_from_config_root(tmp_path):
    """A callable under the config root imports without error and leaves sys.modules clean."""
    write(tmp_path, "transforms/mine.py", "def upper(message):\n    return message.payload.upper()\n")
    base(tmp_path, api=API + "  - type: transform\n    stage: client\n    callable: transforms.mine:upper\n")
    assert check([tmp_path], env={}, import_transforms=True).ok
    assert "transforms.mine" not in sys.modules


def test_transform_module_that_raises(tmp_path):
    """A module that raises on import is WSG117 naming the exception, never a crash."""
    write(tmp_path, "boom.py", "raise RuntimeError('kaput')\n")
    base(tmp_path, api=API + "  - type: transform\n    stage: client\n    callable: boom:f\n")
    result = check([tmp_path], env={}, import_transforms=True)
    assert codes(result) == ["WSG117"]
    assert "RuntimeError: kaput" in result.diagnostics[0].summary


def test_transform_checked_statically_runs_no_code(tmp_path):
    """By default a callable is checked without importing: a module with side effects passes and runs nothing."""
    write(tmp_path, "hooks.py", "open(__file__ + '.ran', 'w').close()\n\n\ndef upper(message, *, extra=1):\n"
          "    return message\n")
    base(tmp_path, api=API + "  - type: transform\n    stage: client\n    callable: hooks:upper\n")
    assert run_check(tmp_path).ok
    assert not (tmp_path / "hooks.py.ran").exists()


def test_transform_static_check_refuses_what_it_cannot_vouch_for(tmp_path):
    """`os:system`, a module that does not parse, a missing function and a two-argument one are WSG117."""
    write(tmp_path, "broken.py", "def upper(message:\n")
    write(tmp_path, "two.py", "def upper(message, other):\n    return message\n")
    api = API
    for spec in ("os:system", "broken:upper", "two:uper", "two:upper"):
        api += f"  - type: transform\n    stage: client\n    callable: {spec}\n"
    base(tmp_path, api=api)
    result = run_check(tmp_path)
    assert codes(result) == ["WSG117"] * 4
    summaries = [d.summary for d in result.diagnostics]
    assert "module 'os' is not a file in the config tree" in summaries[0]
    assert "--import-transforms" in result.diagnostics[0].hint
    assert summaries[1].startswith("module 'broken' does not parse")
    assert summaries[2] == "module 'two' defines no function 'uper'" and result.diagnostics[2].hint == \
        "did you mean 'upper'?"
    assert summaries[3].startswith("two:upper must take exactly one argument")


def test_tls_files_missing(tmp_path):
    """A Port's certificate that does not exist is WSG118 (relative to the declaring file)."""
    write(tmp_path, "certs/key.pem", "x")
    base(tmp_path, port=PORT + "tls:\n  cert: certs/cert.pem\n  key: certs/key.pem\n")
    assert found(run_check(tmp_path)) == [("WSG118", "ports.yaml", 5, 9)]


def test_upstream_loop(tmp_path):
    """An upstream that is the gateway's own route is WSG119."""
    base(tmp_path, api=API.replace("ws://backend.internal:8765/api/demo/", "ws://localhost:8082/websocket/EchoWS/1.0"))
    assert found(run_check(tmp_path)) == [("WSG119", "echo.yaml", 7, 12)]


def test_at_most_one_gateway(tmp_path):
    """A second Gateway resource is WSG120."""
    base(tmp_path)
    write(tmp_path, "gw.yaml", "kind: Gateway\nname: a\n---\nkind: Gateway\nname: b\n")
    assert found(run_check(tmp_path)) == [("WSG120", "gw.yaml", 4, 7)]


def test_policy_repeated_in_chain(tmp_path):
    """Two identify policies, or two throttles per API, are WSG123 at the second."""
    api = API + "  - type: throttle\n    max_connections: 5\n  - type: throttle\n    max_connections: 9\n"
    api += "  - type: throttle\n    max_connections: 2\n    per: application\n  - type: identify\n"
    base(tmp_path, api=api)
    assert found(run_check(tmp_path)) == [("WSG123", "echo.yaml", 12, 11), ("WSG123", "echo.yaml", 17, 11)]


def test_api_without_identify_warns(tmp_path):
    """An API with no identify policy is open to anyone: warning WSG201 at `policies`."""
    base(tmp_path, api=API.replace("  - type: identify\n", "  - type: routing\n"))
    result = run_check(tmp_path)
    assert result.ok
    assert found(result) == [("WSG201", "echo.yaml", 8, 1)]


def test_echo_context_declared_twice(tmp_path):
    """The same context path twice in one EchoServer is WSG124."""
    base(tmp_path)
    write(tmp_path, "echo.yaml", ECHO + "  - path: /echo/\n")
    assert found(run_check(tmp_path)) == [("WSG124", "echo.yaml", 7, 11)]


def test_invalid_ip(tmp_path):
    """An identifier that is no address or network is WSG126."""
    base(tmp_path, app=APP.replace("apis:", "  ips: [10.0.0.0/8, 10.0.0.300]\napis:"))
    # WSG230 too: the API identifies by api_key only, so no address is ever compared.
    assert found(run_check(tmp_path)) == [("WSG230", "demo.yaml", 6, 3), ("WSG126", "demo.yaml", 6, 21)]


def test_application_never_usable_warns(tmp_path):
    """An application with no APIs is WSG204 (and the API it left, requiring identification, is WSG216)."""
    base(tmp_path, app=APP.replace("apis: [EchoWS]\n", ""))
    assert found(run_check(tmp_path)) == [("WSG216", "echo.yaml", 9, 11), ("WSG204", "demo.yaml", 2, 7)]


def test_identified_api_without_applications_warns_unless_anonymous(tmp_path):
    """An API whose identify policy no registered application can pass is WSG216; allow_anonymous silences it."""
    base(tmp_path, app=APP.replace("apis: [EchoWS]\n", "apis: []\n"))
    assert ("WSG216", "echo.yaml", 9, 11) in found(run_check(tmp_path))
    base(tmp_path, api=API + "    allow_anonymous: true\n", app=APP.replace("apis: [EchoWS]\n", "apis: []\n"))
    assert "WSG216" not in codes(run_check(tmp_path))


def test_upstream_on_an_unpublished_echo_context_warns(tmp_path):
    """An upstream naming a declared but unpublished echo context is WSG215, with a note at the context."""
    write(tmp_path, "echo.yaml", "kind: EchoServer\nname: backend\nport: 8765\ncontexts:\n  - path: /api/demo/\n"
          "    published: false\n")
    base(tmp_path, api=API.replace("backend.internal", "localhost"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG215", "echo.yaml", 7, 12)]
    assert str(result.diagnostics[0].related[0].location).endswith("echo.yaml:5:11")


def test_duplicate_list_entry_warns(tmp_path):
    """A port listed twice is WSG205."""
    base(tmp_path, api=API.replace("ports: [default]", "ports: [default, default]"))
    assert found(run_check(tmp_path)) == [("WSG205", "echo.yaml", 4, 18)]


def test_upstream_tls_verify_off_warns(tmp_path):
    """`verify: false` on the upstream is WSG206."""
    api = API.replace("ws://", "wss://").replace(
        "    - url: wss://backend.internal:8765/api/demo/\n",
        "    - url: wss://backend.internal:8765/api/demo/\n  tls:\n    verify: false\n",
    )
    base(tmp_path, api=api)
    assert found(run_check(tmp_path)) == [("WSG206", "echo.yaml", 9, 13)]


def test_round_robin_with_one_endpoint_warns(tmp_path):
    """Round-robin over one endpoint is WSG209."""
    base(tmp_path, api=API + "  - type: routing\n    strategy: round-robin\n")
    assert found(run_check(tmp_path)) == [("WSG209", "echo.yaml", 11, 15)]


def test_fixed_transform_is_seen_by_the_next_check(tmp_path):
    """A failed import is not remembered: after the module is fixed, the next check (a reload) passes."""
    write(tmp_path, "hooks.py", "def other(message):\n    return message.payload\n")
    base(tmp_path, api=API + "  - type: transform\n    stage: client\n    callable: hooks:upper\n")
    assert codes(run_check(tmp_path)) == ["WSG117"]
    write(tmp_path, "hooks.py", "def upper(message):\n    return message.payload.upper()\n\n\n# fixed\n")
    assert run_check(tmp_path).ok


def test_installed_module_callable_is_found_and_kept(tmp_path):
    """A callable from an installed module imports normally and stays loaded (no re-import of live modules)."""
    import json as json_module

    base(tmp_path, api=API + "  - type: transform\n    stage: client\n    callable: json:dumps\n")
    assert check([tmp_path], env={}, import_transforms=True).ok
    assert sys.modules["json"] is json_module


def test_log_files_stay_in_the_config_tree_or_a_declared_directory(tmp_path):
    """An absolute log path or a `..` escape is WSG132; the Gateway's `log_directories` lets one in."""
    root = tmp_path / "config"
    outside = tmp_path / "var-log"
    api = API + f"  - type: log-invocation\n    file: {outside}/a.jsonl\n  - type: log-invocation\n" \
        "    name: second\n    file: ../../escape.jsonl\n  - type: log-invocation\n    name: third\n" \
        "    file: ../logs/kept.jsonl\n"
    base(root, api=api)
    result = run_check(root)
    assert found(result) == [("WSG132", "echo.yaml", 11, 11), ("WSG132", "echo.yaml", 14, 11)]
    assert result.diagnostics[0].summary == f"log file {outside}/a.jsonl is an absolute path"
    assert "log_directories" in result.diagnostics[1].hint
    write(root, "gateway.yaml", f"kind: Gateway\nname: g\nlog_directories: [{outside}]\n")
    assert found(run_check(root)) == [("WSG132", "echo.yaml", 14, 11)]
