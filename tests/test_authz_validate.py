"""validate and plan on the authorizer, remote JWKS, limits per application and conditioned routes (issue 24)."""

from __future__ import annotations

from pathlib import Path

from config_helpers import APP, PORT, found, run_check, write

from gateway.build.pipeline import build
from gateway.changes.plan import diff
from gateway.config import check

API_HEAD = """\
kind: API
name: EchoWS
path: /websocket/EchoWS/1.0
ports: [default]
upstream:
  endpoints:
    - url: ws://backend.internal:8765/api/demo/
"""


def tree(root: Path, api: str) -> list[tuple[str, str, int, int]]:
    write(root, "ports.yaml", PORT)
    write(root, "apis/echo.yaml", api)
    write(root, "apps/demo.yaml", APP)
    # WSG230: the demo application's API key is unused by an API identifying by authorizer or jwt (not at issue).
    return [d for d in found(run_check(root)) if d[:2] != ("WSG230", "demo.yaml")]


def test_authorizer_block_missing_and_mixed_with_other_methods(tmp_path):
    """`by: [authorizer]` without its block, and authorizer beside api_key: WSG190 at `by` each time."""
    api = API_HEAD + """\
policies:
  - type: identify
    by: [api_key, authorizer]
"""
    assert tree(tmp_path, api) == [("WSG190", "echo.yaml", 10, 9), ("WSG190", "echo.yaml", 10, 19)]


def test_authorizer_url_schemes(tmp_path):
    """An http:// authorizer elsewhere than this machine is WSG193; http:// to 127.0.0.1 is the WSG270 warning."""
    remote = API_HEAD + """\
policies:
  - type: identify
    by: [authorizer]
    authorizer:
      url: http://auth.example/check
"""
    assert tree(tmp_path / "a", remote) == [("WSG193", "echo.yaml", 12, 12)]
    local = remote.replace("auth.example", "127.0.0.1:8181")
    assert tree(tmp_path / "b", local) == [("WSG270", "echo.yaml", 12, 12)]


def test_authorizer_block_unused_and_its_missing_files(tmp_path):
    """An `authorizer:` block `by` does not list is WSG274; its CA file that does not exist is WSG118."""
    api = API_HEAD + """\
policies:
  - type: identify
    authorizer:
      url: https://auth.example/check
      ca_file: missing-ca.pem
"""
    assert tree(tmp_path, api) == [("WSG274", "echo.yaml", 10, 5), ("WSG118", "echo.yaml", 12, 16)]


def test_jwks_url_is_a_key_source_and_must_be_https(tmp_path):
    """`jwks_url` alone is a key source (no WSG128); beside `jwks_file` it is one too many (WSG128); an http://
    URL to another host is WSG193."""
    api = API_HEAD + """\
policies:
  - type: identify
    by: [jwt]
    jwt:
      issuer: https://idp.example
      audience: [echo]
      jwks_url: http://idp.example/jwks.json
"""
    assert tree(tmp_path / "a", api) == [("WSG193", "echo.yaml", 14, 17)]
    good = api.replace("http://idp", "https://idp")
    assert tree(tmp_path / "b", good) == []
    both = good + "      jwks_file: keys.json\n"
    assert [d[0] for d in tree(tmp_path / "c", both)] == ["WSG128"]


def test_routes_tied_on_conditions_are_warned(tmp_path):
    """Two APIs on one path, one conditioned on a header and one on a query parameter: a request with both goes
    to the first by name, warned with WSG273 at the second's condition."""
    second = API_HEAD.replace("EchoWS\n", "Other\n") + 'match_query: {v: "2"}\n'
    api = API_HEAD + 'match_headers: {X-Version: "2"}\n---\n' + second
    assert [d for d in tree(tmp_path, api) if d[0] != "WSG201"] == [("WSG273", "echo.yaml", 17, 1)]


def test_plan_shows_new_fields_and_disturbs_nobody(tmp_path, monkeypatch):
    """Conditions, an authorizer and tiers appear field by field in the plan, as an update that disturbs no live
    connection (new upgrades follow the new config)."""
    monkeypatch.chdir(tmp_path)
    old, new = Path("old"), Path("new")
    for root in (old, new):
        write(root, "ports.yaml", PORT)
        write(root, "apps/demo.yaml", APP)
    write(old, "apis/echo.yaml", API_HEAD + "policies:\n  - type: identify\n  - type: throttle\n"
          "    max_connections: 5\n")
    write(new, "apis/echo.yaml", API_HEAD + 'match_headers: {X-Version: "2"}\npolicies:\n  - type: identify\n'
          "  - type: throttle\n    max_connections: 5\n    tiers:\n"
          "      partner: {applications: [demo-app], max_connections: 50}\n")
    before, after = check([old], env={}), check([new], env={})
    assert before.config is not None and after.config is not None
    (change,) = diff(before.config, after.config).changes
    paths = [f.path for f in change.fields]
    assert "match_headers.x-version" in paths
    assert "policies[throttle per api].tiers.partner.max_connections" in paths
    assert change.action == "update" and not change.disruptive


def test_authorizer_ca_file_that_does_not_load_is_a_build_error(tmp_path):
    """A `ca_file` that exists but is not PEM fails the build step as `run` would load it: WSG171 at the field."""
    api = API_HEAD + """\
policies:
  - type: identify
    by: [authorizer]
    authorizer:
      url: https://auth.example/check
      ca_file: ca.pem
"""
    write(tmp_path, "ports.yaml", PORT)
    write(tmp_path, "apis/echo.yaml", api)
    write(tmp_path, "apps/demo.yaml", APP)
    write(tmp_path, "apis/ca.pem", "not a certificate\n")
    result = build([tmp_path], env={})
    assert result.config is None
    assert [d for d in found(result) if d[0] != "WSG230"] == [("WSG171", "echo.yaml", 13, 16)]


def test_an_application_of_an_authorizer_api_needs_no_identifiers(tmp_path):
    """The authorizer names applications itself: one without identifiers registered to its API is no WSG204."""
    api = API_HEAD + """\
policies:
  - type: identify
    by: [authorizer]
    authorizer:
      url: https://auth.example/check
"""
    write(tmp_path, "apps/partner.yaml", "kind: Application\nname: partner\napis: [EchoWS]\n")
    assert tree(tmp_path, api) == []


def test_settings_that_never_take_effect(tmp_path):
    """`cache_ttl` without forwarded credentials and `jwks_timeout` without `jwks_url` are WSG230 at their keys."""
    api = API_HEAD + """\
policies:
  - type: identify
    by: [authorizer]
    authorizer:
      url: https://auth.example/check
      cache_ttl: 30
    jwt:
      issuer: https://idp.example
      audience: [echo]
      secret: {env: JWT_SECRET}
      algorithms: [HS256]
      jwks_timeout: 5
"""
    codes = [d for d in tree(tmp_path, api) if d[0] == "WSG230"]
    assert codes == [("WSG230", "echo.yaml", 13, 7), ("WSG230", "echo.yaml", 19, 7)]
