"""Loading: YAML syntax, the source map, schema and model errors, with exact positions."""

from __future__ import annotations

from pathlib import Path

from config_helpers import API, APP, PORT, base, codes, found, run_check, write

from gateway.config import check
from gateway.config.source import load

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_examples_are_valid_with_the_expected_warnings():
    """The tutorial config checks clean apart from the plaintext key and the two unset variables."""
    result = check([EXAMPLES], env={})
    assert result.ok
    assert sorted(codes(result)) == ["WSG200", "WSG203", "WSG203"]
    assert set(result.config.apis) == {"EchoWS", "ServerTime", "EchoHA", "Tracking"}
    assert result.config.root == EXAMPLES
    assert result.config.ports["default"].model.port == 8082


def test_env_key_set_silences_the_warning():
    """An `{env: ...}` key whose variable is set gives no WSG203."""
    result = check([EXAMPLES], env={"DEMO_APP_KEY": "secret", "TRACKING_PUSH_KEY": "secret"})
    assert codes(result) == ["WSG200"]


def test_source_map_records_keys_and_values(tmp_path):
    """Every key and value gets its 1-based line and column."""
    write(tmp_path, "a.yaml", "kind: Port\nname: p\nlimits:\n  max_connections: 5\nlist:\n  - x\n  - {y: 1}\n")
    (doc,) = load([tmp_path]).documents
    assert (doc.keys[("limits", "max_connections")].line, doc.keys[("limits", "max_connections")].col) == (4, 3)
    assert (doc.values[("limits", "max_connections")].line, doc.values[("limits", "max_connections")].col) == (4, 20)
    assert (doc.values[("list", 1, "y")].line, doc.values[("list", 1, "y")].col) == (7, 9)
    assert doc.data == {"kind": "Port", "name": "p", "limits": {"max_connections": 5}, "list": ["x", {"y": 1}]}


def test_syntax_error_position(tmp_path):
    """A YAML syntax error is WSG001 at the scanner's position."""
    write(tmp_path, "bad.yaml", "kind: Port\nname: [default\nport: 1\n")
    result = run_check(tmp_path)
    assert not result.ok
    assert found(result)[0][0] == "WSG001"
    assert found(result)[0][1:3] == ("bad.yaml", 3)


def test_syntax_error_in_one_document_keeps_the_others(tmp_path):
    """The other documents of a file with a broken one are still checked."""
    write(tmp_path, "multi.yaml",
          "kind: Port\nname: a\nport: 1\nhots: x\n---\nkind: Port\nname: : :\n---\nkind: Port\nname: c\nprt: 3\n")
    result = run_check(tmp_path)
    assert ("WSG100", "multi.yaml", 4, 1) in found(result)
    assert ("WSG100", "multi.yaml", 11, 1) in found(result)
    assert any(code == "WSG001" and line == 7 for code, _, line, _ in found(result))


def test_duplicate_key(tmp_path):
    """A key written twice in one mapping is WSG002 at the second, noting the first."""
    write(tmp_path, "p.yaml", "kind: Port\nname: a\nport: 1\nport: 2\n")
    result = run_check(tmp_path)
    assert found(result) == [("WSG002", "p.yaml", 4, 1)]
    assert result.diagnostics[0].related[0].location.line == 3


def test_tab_indentation(tmp_path):
    """A tab in the indentation is WSG004 with a hint about spaces."""
    write(tmp_path, "t.yaml", "kind: Port\nlimits:\n\tmax_connections: 1\n")
    result = run_check(tmp_path)
    assert found(result) == [("WSG004", "t.yaml", 3, 1)]
    assert "spaces" in result.diagnostics[0].hint


def test_not_a_mapping_and_missing_kind(tmp_path):
    """A list document is WSG008; a mapping without kind is WSG009."""
    write(tmp_path, "a.yaml", "- a\n- b\n---\nname: x\n")
    assert found(run_check(tmp_path)) == [("WSG008", "a.yaml", 1, 1), ("WSG009", "a.yaml", 4, 1)]


def test_unknown_kind_did_you_mean(tmp_path):
    """`kind: api` gets WSG009 at the value with a did-you-mean."""
    write(tmp_path, "a.yaml", "kind: api\nname: x\n")
    result = run_check(tmp_path)
    assert found(result) == [("WSG009", "a.yaml", 1, 7)]
    assert result.diagnostics[0].hint == "did you mean 'API'?"


def test_unknown_field_points_at_the_key(tmp_path):
    """A typo'd field is WSG100 at the key with a did-you-mean."""
    base(tmp_path, port=PORT + "hots: 127.0.0.1\n")
    result = run_check(tmp_path)
    assert found(result) == [("WSG100", "ports.yaml", 4, 1)]
    assert result.diagnostics[0].hint == "did you mean 'host'?"


def test_nested_unknown_field(tmp_path):
    """Unknown fields inside policies are found in the branch the policy's type chose; a typo is one diagnostic."""
    base(tmp_path, api=API + "  - type: throttle\n    max_conections: 5\n")
    result = run_check(tmp_path)
    # One problem, one diagnostic: the typo's "did you mean" covers the required field it misses.
    assert found(result) == [("WSG100", "echo.yaml", 11, 5)]
    assert result.diagnostics[0].hint == "did you mean 'max_connections'?"
    unknown = next(d for d in result.diagnostics if d.code == "WSG100")
    assert unknown.hint == "did you mean 'max_connections'?"


def test_wrong_type_points_at_the_value(tmp_path):
    """A quoted number is WSG101 at the value with a hint to drop the quotes."""
    base(tmp_path, port='kind: Port\nname: default\nport: "8082"\n')
    result = run_check(tmp_path)
    assert found(result) == [("WSG101", "ports.yaml", 3, 7)]
    assert "quotes" in result.diagnostics[0].hint


def test_ports_as_string_instead_of_list(tmp_path):
    """`ports: default` is WSG101 with a hint to write a list."""
    base(tmp_path, api=API.replace("ports: [default]", "ports: default"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG101", "echo.yaml", 4, 8)]
    assert result.diagnostics[0].hint == "write a list: `ports: [default]`"


def test_missing_field_points_at_the_mapping(tmp_path):
    """A missing required field is WSG102 at the start of its parent mapping."""
    base(tmp_path, port="kind: Port\nname: default\n")
    assert found(run_check(tmp_path)) == [("WSG102", "ports.yaml", 1, 1)]


def test_policy_type_typo(tmp_path):
    """An unknown policy type is WSG107 with a did-you-mean, not a wall of union errors."""
    base(tmp_path, api=API.replace("type: identify", "type: identfy"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG107", "echo.yaml", 9, 11)]
    assert result.diagnostics[0].hint == "did you mean 'identify'?"


def test_transform_stage_typo(tmp_path):
    """A transform stage typo is WSG103 at the value, suggesting the right word."""
    api = API + "  - type: transform\n    stage: clinet\n    callable: m:f\n"
    base(tmp_path, api=api)
    result = run_check(tmp_path)
    assert found(result) == [("WSG103", "echo.yaml", 11, 12)]
    assert result.diagnostics[0].hint == "did you mean 'client'?"


def test_limits_below_one(tmp_path):
    """A throttle limit of 0 is WSG105 at the value."""
    base(tmp_path, api=API + "  - type: throttle\n    max_connections: 0\n")
    assert found(run_check(tmp_path)) == [("WSG105", "echo.yaml", 11, 22)]


def test_empty_list(tmp_path):
    """`endpoints: []` is WSG106."""
    api = API.replace("  endpoints:\n    - url: ws://backend.internal:8765/api/demo/\n", "  endpoints: []\n")
    base(tmp_path, api=api)
    assert found(run_check(tmp_path)) == [("WSG106", "echo.yaml", 6, 14)]


def test_optional_mapping_with_wrong_inner_type(tmp_path):
    """An error inside an optional (`X | None`) mapping is reported for the mapping branch."""
    base(tmp_path, port=PORT + "tls:\n  cert: 5\n  key: k.pem\n")
    assert found(run_check(tmp_path)) == [("WSG101", "ports.yaml", 5, 9)]


def test_version_float_is_fine_but_lossy_one_warns(tmp_path):
    """`version: 1.0` is accepted as "1.0"; `version: 1.10` warns that YAML made it 1.1."""
    base(tmp_path, api=API + "version: 1.0\n")
    result = run_check(tmp_path)
    assert result.ok and result.config.apis["EchoWS"].model.version == "1.0"
    base(tmp_path, api=API + "version: 1.10\n")
    result = run_check(tmp_path)
    assert found(result) == [("WSG210", "echo.yaml", 10, 10)]


def test_yaml_date_in_a_string_field(tmp_path):
    """An unquoted date where text is expected gets a hint to quote it."""
    base(tmp_path, app=APP + "description: 2024-01-01\n")
    result = run_check(tmp_path)
    assert found(result) == [("WSG101", "demo.yaml", 7, 14)]
    assert "quotes" in result.diagnostics[0].hint


def test_every_problem_of_every_file_in_one_run(tmp_path):
    """Errors in several files are all reported, sorted by file and line."""
    base(tmp_path, port=PORT + "hots: x\n", app=APP.replace("name: demo-app", "name: demo app"))
    write(tmp_path, "zz.yaml", "kind: Gateway\nname: g\nadmin: {port: -1}\n")
    result = run_check(tmp_path)
    assert found(result) == [
        ("WSG103", "demo.yaml", 2, 7),
        ("WSG100", "ports.yaml", 4, 1),
        ("WSG105", "zz.yaml", 3, 15),
    ]


def test_relative_paths_resolve_against_the_declaring_file(tmp_path):
    """`Loaded.base_dir` is the directory of the file that declared the resource."""
    base(tmp_path)
    result = run_check(tmp_path)
    assert result.config.apis["EchoWS"].base_dir == tmp_path / "apis"
    assert result.config.apis["EchoWS"].resolve("../logs/x.jsonl") == tmp_path / "apis" / "../logs/x.jsonl"
    assert (result.config.apis["EchoWS"].location.line, result.config.apis["EchoWS"].location.col) == (1, 1)


def test_missing_path_and_empty_tree(tmp_path):
    """A path that does not exist is WSG003; a tree without YAML is WSG006."""
    assert codes(check([tmp_path / "nope"])) == ["WSG003"]
    assert codes(check([tmp_path])) == ["WSG006"]


def test_recursive_alias_does_not_hang(tmp_path):
    """A self-referencing alias is WSG005, not an infinite loop."""
    write(tmp_path, "a.yaml", "kind: Port\nname: p\nport: 1\nx: &a [*a]\n")
    assert "WSG005" in codes(run_check(tmp_path))


def test_merge_keys_are_expanded(tmp_path):
    """`<<: *base` merges a mapping; explicit keys win."""
    write(tmp_path, "p.yaml", "kind: Port\nname: b\nport: 2\nlimits:\n"
          "  <<: {max_connections: 3, handshake_timeout: 9}\n"
          "  handshake_timeout: 4\n")
    result = run_check(tmp_path)
    assert result.ok
    assert result.config.ports["b"].model.limits.max_connections == 3
    assert result.config.ports["b"].model.limits.handshake_timeout == 4


def test_source_line_is_attached(tmp_path):
    """Diagnostics carry the offending source line for the caret display."""
    base(tmp_path, port=PORT + "hots: x\n")
    assert run_check(tmp_path).diagnostics[0].source_line == "hots: x"


def test_unclosed_quote_points_at_its_start(tmp_path):
    """An unclosed quote is reported where the quoted value starts, not past the end of the file."""
    write(tmp_path, "q.yaml", 'kind: Port\nname: "b\nport: 2\n')
    result = run_check(tmp_path)
    assert found(result) == [("WSG001", "q.yaml", 2, 7)]
    assert "quote" in result.diagnostics[0].hint


def test_policy_written_as_a_bare_word(tmp_path):
    """`- identify` instead of `- type: identify` is WSG101 with the fix in the hint."""
    base(tmp_path, api=API.replace("  - type: identify", "  - identify"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG101", "echo.yaml", 9, 5)]
    assert result.diagnostics[0].hint == "a policy is a mapping: `- type: identify`"


def test_upstream_written_as_a_url(tmp_path):
    """`upstream: ws://...` and `endpoints: [ws://...]` get hints with the right shape."""
    api = API.replace("upstream:\n  endpoints:\n    - url: ws://backend.internal:8765/api/demo/\n", "upstream: ws://b:1/x\n")
    base(tmp_path, api=api)
    result = run_check(tmp_path)
    assert found(result) == [("WSG101", "echo.yaml", 5, 11)]
    assert result.diagnostics[0].hint == "the upstream is a mapping: `upstream: {endpoints: [{url: ws://b:1/x}]}`"
    base(tmp_path, api=API.replace("    - url: ws://", "    - ws://"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG101", "echo.yaml", 7, 7)]
    assert result.diagnostics[0].hint.startswith("an endpoint is a mapping: `- url: ws://")


def test_a_syntax_error_on_a_credential_line_never_quotes_the_credential(tmp_path):
    """A YAML error located on an API key item, a flow list of keys or a password line shows the line cut at
    the credential; other lines are quoted whole."""
    write(tmp_path, "a.yaml", "kind: Application\nname: a\nidentifiers:\n  api_keys:\n    - s3cret-one: x: y\n")
    write(tmp_path, "b.yaml", "kind: Application\nname: b\nidentifiers:\n  api_keys: [s3cret-two, {oops\n")
    write(tmp_path, "c.yaml", "kind: Application\nname: c\nidentifiers:\n  basic:\n    - username: bob\n"
                              "      password: s3cret-three: x\n")
    write(tmp_path, "d.yaml", "kind: Port\nname: d\nport: 1: 2\n")
    result = run_check(tmp_path)
    lines = {Path(d.location.file).name: d.source_line for d in result.diagnostics if d.code == "WSG001"}
    assert set(lines) == {"a.yaml", "b.yaml", "c.yaml", "d.yaml"}
    assert lines["a.yaml"] == "    - [redacted]"
    assert lines["b.yaml"] == "  api_keys: [redacted]"
    assert lines["c.yaml"] == "      password: [redacted]"
    assert lines["d.yaml"] == "port: 1: 2"  # not a credential: quoted whole
    assert not any("s3cret" in (d.source_line or "") + d.summary + d.detail for d in result.diagnostics)


def test_schema_error_in_one_field_hides_no_other_check(tmp_path):
    """A misspelt policy field and the same file's trailing-slash error (a rule) come out in one run."""
    write(tmp_path, "echo.yaml", "kind: EchoServer\nname: backend\nport: 8765\ncontexts:\n  - path: /api/demo/\n")
    api = API.replace("ws://backend.internal:8765/api/demo/", "ws://localhost:8765/api/demo")
    policies = "  - type: throttle\n    max_conections: 5\n  - type: routing\n    strategy: round-robin\n"
    base(tmp_path, api=api + policies)
    result = run_check(tmp_path)
    # The cut policy shifts the routing policy up; its warning still points at its own line.
    assert found(result) == [("WSG104", "echo.yaml", 7, 40), ("WSG100", "echo.yaml", 11, 5),
                             ("WSG209", "echo.yaml", 13, 15)]


def test_salvaged_document_reports_no_absence_the_cut_made(tmp_path):
    """Cutting an identify policy with a bad field does not add the "no identify policy" warning."""
    base(tmp_path, api=API.replace("  - type: identify\n", "  - type: identify\n    by: [api_kee]\n"))
    assert codes(run_check(tmp_path)) == ["WSG103"]
