"""validate on message routes: every new field, with located diagnostics (code, file, line, column)."""

from __future__ import annotations

from config_helpers import API, base, codes, found, run_check

ROUTED = """\
kind: API
name: EchoWS
path: /websocket/EchoWS/1.0
ports: [default]
policies:
  - type: identify
  - type: validate-messages
    discriminator: action
messages:
  - name: join
    origin: client
    schema: {type: object, properties: {action: {const: join}}}
  - name: say
    origin: client
    schema: {type: object, properties: {action: {const: say}}}
routes:
  - key: join
    integration: {websocket: {url: "ws://rooms.internal:9000/join"}}
  - key: say
    integration: {http: {url: "https://chat.internal/say"}}
"""


def test_routed_api_is_clean(tmp_path):
    """An API with routes, each key selected by a declared message, checks without a diagnostic."""
    base(tmp_path, api=ROUTED)
    result = run_check(tmp_path)
    assert result.ok and result.diagnostics == []


def test_route_key_no_message_produces(tmp_path):
    """A route key no declared client message selects: WSG143 at the key, with a did-you-mean."""
    base(tmp_path, api=ROUTED.replace("  - key: say\n", "  - key: sya\n"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG143", "echo.yaml", 19, 10)]
    assert result.diagnostics[0].hint == "did you mean 'say'?"


def test_route_without_integration(tmp_path):
    """A route with no integration: WSG144 at its key."""
    base(tmp_path, api=ROUTED.replace('    integration: {http: {url: "https://chat.internal/say"}}\n', ""))
    assert found(run_check(tmp_path)) == [("WSG144", "echo.yaml", 19, 10)]


def test_two_routes_with_one_key(tmp_path):
    """Two routes with the key join: WSG145 at the second, noting the first."""
    base(tmp_path, api=ROUTED.replace("  - key: say\n", "  - key: join\n"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG145", "echo.yaml", 19, 10)]
    related = result.diagnostics[0].related[0].location
    assert (related.line, related.col) == (17, 10)


def test_default_route_that_can_never_be_chosen_is_a_warning(tmp_path):
    """validate-messages lets only join and say through and both have routes: `$default` is warned (WSG241)."""
    base(tmp_path, api=ROUTED + '  - key: $default\n    integration: {http: {url: "http://rest.internal/"}}\n')
    result = run_check(tmp_path)
    assert result.ok
    assert found(result) == [("WSG241", "echo.yaml", 21, 10)]
    assert result.diagnostics[0].severity == "warning"


def test_routes_without_selection_expression(tmp_path):
    """Named routes with neither `route_selection.expression` nor a discriminator: WSG146 at `routes`."""
    base(tmp_path, api=ROUTED.replace("    discriminator: action\n", ""))
    assert found(run_check(tmp_path)) == [("WSG146", "echo.yaml", 15, 1)]


def test_selection_expression_forms(tmp_path):
    """A JSON Pointer and AWS's `$request.body.` form select the same key as the simple path."""
    for expression in ("/action", "$request.body.action", "action"):
        base(tmp_path, api=ROUTED.replace("routes:\n", f"route_selection:\n  expression: '{expression}'\nroutes:\n"))
        assert run_check(tmp_path).diagnostics == [], expression


def test_integration_urls_and_events(tmp_path):
    """An http integration with a ws:// URL is WSG147 at the URL; a $connect event on a WebSocket upstream is
    WSG148 at `websocket`."""
    api = ROUTED.replace("https://chat.internal/say", "ws://chat.internal/say") + (
        '  - key: $connect\n    integration: {websocket: {url: "ws://auth.internal/"}}\n')
    base(tmp_path, api=api)
    result = run_check(tmp_path)
    assert found(result) == [("WSG147", "echo.yaml", 20, 31), ("WSG148", "echo.yaml", 22, 19)]
    assert "`websocket`" in (result.diagnostics[0].hint or "")


def test_integration_headers_and_tls_files(tmp_path):
    """An integration header whose variable is unset is warned (WSG203); a missing CA file is WSG118."""
    api = ROUTED.replace('    integration: {http: {url: "https://chat.internal/say"}}\n', """\
    integration:
      http:
        url: https://chat.internal/say
        headers: {Authorization: {env: CHAT_TOKEN}}
        tls: {ca_file: missing.pem}
""")
    base(tmp_path, api=api)
    result = run_check(tmp_path)
    assert found(result) == [("WSG203", "echo.yaml", 23, 40), ("WSG118", "echo.yaml", 24, 24)]
    assert found(run_check(tmp_path, env={"CHAT_TOKEN": "x"})) == [("WSG118", "echo.yaml", 24, 24)]


def test_upstream_and_routes_are_exclusive(tmp_path):
    """An API with both `upstream` and `routes`, or with neither, is refused by the model."""
    both = ROUTED.replace("ports: [default]\n", "ports: [default]\nupstream:\n  endpoints:\n    - url: ws://a:1/\n")
    base(tmp_path, api=both)
    assert codes(run_check(tmp_path)) == ["WSG108"]
    base(tmp_path, api=API.replace("upstream:\n  endpoints:\n    - url: ws://backend.internal:8765/api/demo/\n", ""))
    assert codes(run_check(tmp_path)) == ["WSG108"]


def test_route_policies_limited_to_message_stage_types(tmp_path):
    """A route's own policies are message-stage ones: a throttle there is an unknown policy type."""
    api = ROUTED.replace('  - key: say\n', '  - key: say\n    policies:\n      - type: throttle\n'
                         '        max_connections: 1\n')
    base(tmp_path, api=api)
    assert found(run_check(tmp_path)) == [("WSG107", "echo.yaml", 21, 15)]


def test_route_selection_without_routes_is_warned(tmp_path):
    """`route_selection` on an API without routes is never used: WSG242."""
    base(tmp_path, api=API + "route_selection: {expression: action}\n")
    assert found(run_check(tmp_path)) == [("WSG242", "echo.yaml", 10, 1)]


def test_integration_tls_verification_off_is_warned(tmp_path):
    """`tls.verify: false` on a route's integration is warned (WSG206) at the field."""
    api = ROUTED.replace('    integration: {http: {url: "https://chat.internal/say"}}\n',
                         '    integration: {http: {url: "https://chat.internal/say", tls: {verify: false}}}\n')
    base(tmp_path, api=api)
    assert found(run_check(tmp_path)) == [("WSG206", "echo.yaml", 20, 74)]


def test_field_level_problems_are_located(tmp_path):
    """Schema and model checks of the new fields: a malformed expression and an unknown `no_route` (WSG103), a
    timeout of 0 and a close code below 1000 (WSG105), an unknown on_error action (WSG103), an integration with
    both kinds (WSG108), each at its value."""
    base(tmp_path, api=ROUTED.replace("routes:\n", "route_selection: {expression: 'a b', no_route: reject}\nroutes:\n"))
    assert found(run_check(tmp_path)) == [("WSG103", "echo.yaml", 16, 31), ("WSG103", "echo.yaml", 16, 48)]
    say = '{http: {url: "https://chat.internal/say"}}'
    base(tmp_path, api=ROUTED.replace(say, say[:-2] + ', timeout: 0, on_error: {action: explode, close_code: 999}}}'))
    assert found(run_check(tmp_path)) == [("WSG105", "echo.yaml", 20, 69), ("WSG103", "echo.yaml", 20, 91),
                                          ("WSG105", "echo.yaml", 20, 112)]
    base(tmp_path, api=ROUTED.replace('{websocket: {url: "ws://rooms.internal:9000/join"}}',
                                      '{websocket: {url: "ws://rooms.internal:9000/join"}, http: {url: "http://x/"}}'))
    assert found(run_check(tmp_path)) == [("WSG108", "echo.yaml", 18, 18)]
