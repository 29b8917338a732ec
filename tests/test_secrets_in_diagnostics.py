"""No credential reaches a diagnostic, whatever shape it was written in.

A hypothesis property puts a marker, in a random misshapen structure, under a random credential-bearing
field (or a misspelling of one, or a URL's userinfo) of an otherwise valid config, and renders what
`validate` reports as text, JSON and GitHub annotations: the marker never appears. The same structures go
through a live gateway's reload (its log and admin `POST`/`GET /reload`), and the issue's own cases through
the `wsgate validate` command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from support import TIMEOUT, http_request, run, running_gateway, write_config

from gateway.config import check
from gateway.config.diagnostics import render

PORT = {"kind": "Port", "name": "default", "port": 0, "host": "127.0.0.1"}


def documents(where: str, shape: Any) -> list[dict[str, Any]]:
    """A valid config with ``shape`` written at ``where`` (one of WHERE)."""
    identify: dict[str, Any] = {"type": "identify", "by": ["api_key", "basic"]}
    api: dict[str, Any] = {"kind": "API", "name": "A", "path": "/a", "ports": ["default"],
                           "upstream": {"endpoints": [{"url": "ws://127.0.0.1:9/"}]}, "policies": [identify]}
    identifiers: dict[str, Any] = {"api_keys": [{"env": "K"}], "basic": [{"username": "u", "password": {"env": "P"}}]}
    app = {"kind": "Application", "name": "app", "identifiers": identifiers, "apis": ["A"]}
    if where in ("api_keys", "api_kyes", "apikeys", "basic", "passwords"):
        identifiers[where] = shape
    elif where in ("password", "pasword", "passwd"):
        identifiers["basic"] = [{"username": "u", where: shape}]
    elif where in ("secret", "secrte"):
        identify["by"] = ["jwt"]
        identify["jwt"] = {"issuer": "i", "algorithms": ["HS256"], "audience": ["a"], where: shape}
    elif where == "headers":
        api["upstream"]["headers"] = {"Authorization": shape}
    elif where == "userinfo":
        api["upstream"]["endpoints"] = [{"url": f"ws://user:{shape}@127.0.0.1:9/"}]
    return [PORT, api, app]


def yaml_text(docs: list[dict[str, Any]]) -> str:
    from io import StringIO

    out = StringIO()
    YAML().dump_all(docs, out)
    return out.getvalue()


WHERE = ["api_keys", "api_kyes", "apikeys", "basic", "passwords", "password", "pasword", "passwd", "secret",
         "secrte", "headers"]
MARKER = st.from_regex(r"\AMk[0-9a-f]{10}Zz\Z") | st.integers(10**11, 10**12).map(str)


@st.composite
def misshapen(draw: st.DrawFn) -> tuple[str, Any, str]:
    """(field, structure, marker): the marker as a string or a number, wrapped in lists, mappings, env forms."""
    marker = draw(MARKER)
    leaf: Any = int(marker) if marker.isdigit() and draw(st.booleans()) else marker
    shape = draw(st.sampled_from(["bare", "list", "nested", "map_key", "map_value", "env_extra", "env_value",
                                  "env_list_extra", "in_text", "long_list"]))
    structure: Any = {
        "bare": leaf,
        "list": [leaf],
        "nested": [[leaf, "x"]],
        "map_key": {marker: 1},
        "map_value": {"value": leaf},
        "env_extra": {"env": "SOME_VAR", "value": leaf},
        "env_value": {"env": f"not a name {marker}"},
        "env_list_extra": [{"env": "SOME_VAR", "extra": leaf}],
        "in_text": f"Bearer {marker}",
        "long_list": ["a-long-first-entry-to-push-the-marker-past-a-cut", leaf],
    }[shape]
    return draw(st.sampled_from(WHERE)), structure, marker


def rendered(tmp_path, docs) -> tuple[str, bool]:
    """Every format `validate` renders, joined; and whether the config had errors."""
    root = tmp_path / "config"
    root.mkdir(exist_ok=True)
    (root / "gateway.yaml").write_text(yaml_text(docs))
    result = check([root], env={})
    return "\n".join(render(result.diagnostics, fmt) for fmt in ("text", "json", "github")), not result.ok


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=misshapen())
def test_no_misshapen_credential_reaches_a_diagnostic(tmp_path, case):
    """Text, JSON and GitHub renderings of validate's diagnostics never hold the marker."""
    where, structure, marker = case
    text, _ = rendered(tmp_path, documents(where, structure))
    assert marker not in text, f"{where}: {structure!r}\n{text}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(marker=MARKER)
def test_no_userinfo_reaches_a_diagnostic(tmp_path, marker):
    """A password in an upstream URL is reported (a warning) without the password."""
    text, _ = rendered(tmp_path, documents("userinfo", marker))
    assert "WSG250" in text and marker not in text, text


ISSUE_CASES = {
    "api_keys as a string": ("api_keys", "Mk0issue0001Zz", "Mk0issue0001Zz"),
    "a number as a key": ("api_keys", [123456789012], "123456789012"),
    "a password in a list": ("password", ["Mk0issue0003Zz"], "Mk0issue0003Zz"),
    "a literal jwt.secret": ("secret", "Mk0issue0004Zz", "Mk0issue0004Zz"),
    "an extra field beside env": ("api_keys", [{"env": "K", "value": "Mk0issue0005Zz"}], "Mk0issue0005Zz"),
    "a misspelled credential field": ("pasword", "Mk0issue0006Zz", "Mk0issue0006Zz"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ISSUE_CASES))
def test_the_issues_cases_through_the_validate_command(tmp_path, case):
    """`wsgate validate --format text|json|github` reports each of the issue's cases as an error, without
    the value."""
    where, structure, marker = ISSUE_CASES[case]
    root = tmp_path / "config"
    root.mkdir()
    (root / "gateway.yaml").write_text(yaml_text(documents(where, structure)))
    for fmt in ("text", "json", "github"):
        done = subprocess.run([sys.executable, "-m", "gateway", "validate", str(root), "--format", fmt],
                              capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 1, done  # invalid, and reported
        assert marker not in done.stdout + done.stderr, done.stdout


def test_reload_log_and_admin_never_show_a_misshapen_credential(tmp_path):
    """Failed reloads of misshapen credentials: the reload log, `POST /reload` and `GET /reload` hold the
    diagnostics (code and location) but never the marker."""
    cases = [*ISSUE_CASES.values(), ("headers", "Bearer Mk0issue0007Zz", "Mk0issue0007Zz")]
    write_config(tmp_path, yaml_text(documents("api_keys", [{"env": "K"}])))
    config_file = tmp_path / "config" / "gateway.yaml"

    async def scenario() -> list[str]:
        answers = []
        async with running_gateway(check([tmp_path / "config"], env={}).config, env={}) as gw:
            admin = f"http://127.0.0.1:{gw.admin.port}"
            for where, structure, _ in cases:
                config_file.write_text(yaml_text(documents(where, structure)))
                post = await http_request(admin, b"POST /reload HTTP/1.1\r\nHost: a\r\n\r\n")
                assert post.status == 422 and post.json()["diagnostics"], post.body
                get = await http_request(admin, path="/reload")
                answers += [post.body.decode(), get.body.decode()]
        return answers

    with structlog.testing.capture_logs() as logs:
        answers = run(scenario())
    failed = [entry for entry in logs if entry["event"] == "reload_failed" and entry.get("code")]
    assert len({entry["diagnostic"] for entry in failed}) >= len(cases)
    everything = json.dumps(logs, default=str) + "\n".join(answers)
    for _, _, marker in cases:
        assert marker not in everything


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=misshapen())
def test_no_misshapen_credential_reaches_the_reload_log_or_admin(tmp_path, case):
    """The property's random structures through a live gateway's reload (failed, or applied when the shape
    happens to be valid): the marker is in neither the reload log nor the admin's `POST`/`GET /reload`."""
    where, structure, marker = case
    root = tmp_path / "config"
    root.mkdir(exist_ok=True)
    (root / "gateway.yaml").write_text(yaml_text(documents("api_keys", [{"env": "K"}])))

    async def scenario() -> str:
        async with running_gateway(check([root], env={}).config, env={}, paths=[root]) as gw:
            admin = f"http://127.0.0.1:{gw.admin.port}"
            (root / "gateway.yaml").write_text(yaml_text(documents(where, structure)))
            post = await http_request(admin, b"POST /reload HTTP/1.1\r\nHost: a\r\n\r\n")
            get = await http_request(admin, path="/reload")
            return post.body.decode() + get.body.decode()

    with structlog.testing.capture_logs() as logs:
        answers = run(scenario())
    outcome = [entry for entry in logs if entry["event"] in ("reload_failed", "reload_applied", "reload_skipped")]
    assert outcome, logs  # the reload ran and was logged
    assert marker not in json.dumps(logs, default=str) + answers
