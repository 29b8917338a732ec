"""One config, several environments: `{value: NAME}` resolved from values files, the environment and the tree's
defaults; other tools' documents skipped (apiVersion) or ignored (.wsgateignore)."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_helpers import API, APP, PORT, base, found, write
from support import TIMEOUT, running_gateway

from gateway.build.pipeline import build
from gateway.cli import main
from gateway.config import check

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
TEMPLATE_PORT = PORT.replace("port: 8082", "port: {value: gateway_port, default: 8082}")
TEMPLATE_API = API.replace("ws://backend.internal:8765/api/demo/", '{value: "ws://{backend}:{backend_port}/api/demo/"}')


def tree(root: Path) -> None:
    base(root, port=TEMPLATE_PORT, api=TEMPLATE_API)
    write(root, "values/base.yaml", "backend: backend.internal\nbackend_port: 8765\n")


def test_defaults_resolve_without_a_values_file(tmp_path):
    """With no values file, `{value: NAME, default: ...}` takes its default (the README's first command works)."""
    base(tmp_path, port=TEMPLATE_PORT)
    result = check([tmp_path], env={})
    assert result.ok and result.config is not None
    assert result.config.ports["default"].model.port == 8082


def test_values_files_in_order_then_the_environment(tmp_path):
    """A later values file wins over an earlier one, WSGATE_VALUE_NAME over both; templates fill text."""
    tree(tmp_path / "tree")
    write(tmp_path, "prod.yaml", "gateway_port: 9082\nbackend_port: 9765\n")
    files = [tmp_path / "tree/values/base.yaml", tmp_path / "prod.yaml"]
    result = check([tmp_path / "tree/ports.yaml", tmp_path / "tree/apis", tmp_path / "tree/apps"], env={},
                   values=files)
    assert result.ok and result.config is not None
    assert result.config.ports["default"].model.port == 9082
    assert result.config.apis["EchoWS"].model.upstream.endpoints[0].url == "ws://backend.internal:9765/api/demo/"
    env = {"WSGATE_VALUE_GATEWAY_PORT": "7082"}
    config = check([tmp_path / "tree/ports.yaml", tmp_path / "tree/apis", tmp_path / "tree/apps"], env=env,
                   values=files).config
    assert config is not None and config.ports["default"].model.port == 7082


def test_a_value_nobody_sets_is_an_error_at_its_use(tmp_path):
    """A template naming a value without file, variable or default is WSG013 where it is written, did-you-mean."""
    base(tmp_path, api=TEMPLATE_API)
    write(tmp_path, "vals.yaml", "backend: b.internal\nbackend_prot: 1\n")
    result = check([tmp_path / "ports.yaml", tmp_path / "apis", tmp_path / "apps"], env={},
                   values=[tmp_path / "vals.yaml"])
    assert found(result)[0] == ("WSG013", "echo.yaml", 7, 20)  # no wrong-type error besides
    assert next(d for d in result.diagnostics if d.code == "WSG013").hint == "did you mean 'backend_prot'?"
    # The misspelt name in the values file is a warning at its line there.
    assert ("WSG219", "vals.yaml", 2, 15) in found(result)


def test_a_value_in_a_credential_field_is_refused(tmp_path):
    """`api_keys: [{value: key}]` would put a secret in a values file and a plan: WSG015 at the reference."""
    base(tmp_path, app=APP.replace("    - sha256:434f4cad53d8c1fcbb91e478d081844b190f84c8a9ac3975e671aa6c9e7cc93c",
                                   "    - {value: key, default: abc}"))
    result = check([tmp_path], env={})
    assert not result.ok and found(result) == [("WSG015", "demo.yaml", 5, 15)]


def test_two_different_defaults_for_one_name(tmp_path):
    """Two uses of a name with different defaults is WSG014 at the second, noting the first."""
    base(tmp_path, port=TEMPLATE_PORT + "---\nkind: Port\nname: other\nport: {value: gateway_port, default: 9}\n")
    result = check([tmp_path], env={})
    assert ("WSG014", "ports.yaml", 7, 38) in found(result)


def test_plan_shows_resolved_values_and_never_secrets(tmp_path, capsys, monkeypatch):
    """plan with --values shows the resolved port change and keeps `{env: ...}` keys as references."""
    monkeypatch.setenv("PLAN_SECRET_KEY", "very-secret-value")
    app = APP.replace("    - sha256:434f4cad53d8c1fcbb91e478d081844b190f84c8a9ac3975e671aa6c9e7cc93c",
                      "    - {env: PLAN_SECRET_KEY}")
    base(tmp_path / "now", app=app)
    base(tmp_path / "next", port=TEMPLATE_PORT, app=app)
    write(tmp_path, "prod.yaml", "gateway_port: 9082\n")
    assert main(["plan", str(tmp_path / "next"), "--from", str(tmp_path / "now"),
                 "--values", str(tmp_path / "prod.yaml")]) == 2
    out = capsys.readouterr().out
    assert "8082 → 9082" in out and "Resolved with values from" in out
    assert "very-secret-value" not in out


def test_examples_validate_with_each_environment(capsys, monkeypatch):
    """The examples validate with dev and staging values, as CI runs them, and print the values used."""
    monkeypatch.delenv("DEMO_APP_KEY", raising=False)
    for env in ("dev", "staging"):
        assert main(["validate", str(EXAMPLES), "--values", str(EXAMPLES / "values" / f"{env}.yaml")]) == 0
        out = capsys.readouterr().out
        assert f"note: values from {EXAMPLES / 'values' / f'{env}.yaml'}: admin_port, echo_port, gateway_port" in out
        assert "other formats" not in out and "without apiVersion" not in out


def test_examples_on_other_ports_with_one_values_file():
    """The dev values move the tutorial's listener, echo server, admin and every upstream URL together."""
    result = build([EXAMPLES], env={}, values=[EXAMPLES / "values" / "dev.yaml"])
    assert result.ok and result.config is not None
    config = result.config
    assert config.ports["default"].model.port == 18082
    assert config.echo_servers["demo-backend"].model.port == 18765
    assert config.settings.admin.port == 19900
    urls = [e.url for a in config.apis.values() for e in a.model.upstream.endpoints]
    assert urls and all(u.startswith("ws://localhost:18765/") for u in urls)


async def test_a_reload_resolves_with_the_same_values_files(tmp_path):
    """A gateway started with a values file reloads with it, re-read: a changed value is served after reload."""
    write(tmp_path, "config/ports.yaml", TEMPLATE_PORT.replace("default: 8082", "default: 1"))
    write(tmp_path, "config/apis/echo.yaml", API)
    write(tmp_path, "config/apps/demo.yaml", APP)
    values = write(tmp_path, "env.yaml", "gateway_port: 0\n")
    result = build([tmp_path / "config"], env={}, values=[values])
    assert result.config is not None and result.config.ports["default"].model.port == 0
    async with running_gateway(result.config, paths=[tmp_path / "config"]) as gw:
        write(tmp_path, "config/apis/echo.yaml", API.replace("version", "description: now\nversion"))
        values.write_text("gateway_port: 0\n# re-read\n")
        outcome = await gw.reload("test")
        assert outcome.ok, outcome
        assert gw.config.ports["default"].model.port == 0  # not the tree's default 1: the values file still applies
        assert gw.config.values_files == (values,)
    assert TIMEOUT > 0


def test_other_formats_are_skipped_with_one_note(tmp_path, capsys):
    """Kubernetes documents beside the config are skipped, with one note naming their apiVersions."""
    base(tmp_path)
    write(tmp_path, "k8s.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n"
          "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: y}\n")
    assert main(["validate", "--strict", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "note: 2 documents of other formats skipped (apiVersion apps/v1, v1)" in out


def test_wsgateignore_skips_files_without_a_note(tmp_path, capsys):
    """`.wsgateignore` names files of other tools (no apiVersion): they are neither read nor noted."""
    base(tmp_path)
    write(tmp_path, "compose.yaml", "services:\n  redis: {image: redis}\n")
    write(tmp_path, "prometheus/rules.yaml", "groups: []\n")
    assert main(["validate", str(tmp_path)]) == 1  # without the ignore file: WSG009 twice
    capsys.readouterr()
    write(tmp_path, ".wsgateignore", "# other tools\ncompose.yaml\nprometheus/\n")
    assert main(["validate", "--strict", str(tmp_path)]) == 0
    assert "other formats" not in capsys.readouterr().out


@pytest.mark.parametrize("folder", ["config", "echo", ""])
def test_deploy_validates_clean_under_strict_but_for_its_known_warnings(folder, capsys, monkeypatch):
    """`validate deploy/` reports no error: Kubernetes files are skipped, compose and Prometheus ignored."""
    monkeypatch.setenv("WSGATE_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("WSGATE_ADMIN_TOKEN", "t")
    assert main(["validate", str(DEPLOY / folder)]) == 0
    out = capsys.readouterr().out
    assert " error WSG" not in out and "without apiVersion" not in out
