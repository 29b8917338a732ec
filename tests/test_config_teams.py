"""Several teams in one tree: labels on every resource, `--selector` for validate and plan, and organisation
requirements every API must meet (WSG135, naming the rule)."""

from __future__ import annotations

from config_helpers import API, APP, PORT, base, found, run_check, write

from gateway.cli import main

PAYMENTS = API.replace("name: EchoWS", "name: Pay\nlabels: {team: payments}").replace(
    "/websocket/EchoWS/1.0", "/pay")
SEARCH = API.replace("name: EchoWS", "name: Search\nlabels: {team: search}").replace(
    "/websocket/EchoWS/1.0", "/search").replace("  - type: identify\n", "  - type: identfy\n")
APPS = APP.replace("apis: [EchoWS]", "apis: [Pay, Search]")


def test_labels_are_read_on_every_kind(tmp_path):
    """Labels on a Port, an API and an Application check clean; a number must be quoted (labels are text)."""
    base(tmp_path, port=PORT + "labels: {team: platform, tier: '1', pci: 'true'}\n",
         app=APP.replace("name: demo-app", "name: demo-app\nlabels: {team: payments}"))
    result = run_check(tmp_path)
    assert result.ok and result.diagnostics == []
    assert result.config is not None and result.config.ports["default"].model.labels == {
        "team": "platform", "tier": "1", "pci": "true"}
    base(tmp_path, port=PORT + "labels: {tier: 1}\n")
    assert found(run_check(tmp_path)) == [("WSG101", "ports.yaml", 4, 16)]


def test_validate_selector_reports_only_the_selected_team(tmp_path, capsys):
    """With --selector team=payments, the search team's broken policy is not reported and validate passes."""
    base(tmp_path, api=PAYMENTS, app=APPS)
    write(tmp_path, "apis/search.yaml", SEARCH)
    assert main(["validate", str(tmp_path)]) == 1
    capsys.readouterr()
    assert main(["validate", str(tmp_path), "--selector", "team=payments"]) == 0
    out = capsys.readouterr().out
    assert "WSG107" not in out and "problems outside them not shown" in out
    assert main(["validate", str(tmp_path), "--selector", "team=search"]) == 1
    assert "WSG107" in capsys.readouterr().out


def test_plan_selector_diffs_only_the_selected_resources(tmp_path, capsys):
    """plan --selector team=payments shows the payments API's change, not the search API's."""
    for side, pay, search in (("old", "/pay", "/search"), ("new", "/pay2", "/search2")):
        root = tmp_path / side
        base(root, api=PAYMENTS.replace("path: /pay", f"path: {pay}"), app=APPS)
        write(root, "apis/search.yaml", SEARCH.replace("identfy", "identify").replace("path: /search",
                                                                                       f"path: {search}"))
    assert main(["plan", str(tmp_path / "new"), "--from", str(tmp_path / "old"), "--selector", "team=payments"]) == 2
    out = capsys.readouterr().out
    assert "API.Pay" in out or "API Pay" in out or "Pay" in out
    assert "/search2" not in out and "/pay2" in out


GATEWAY = """\
kind: Gateway
name: gw
requirements:
  - name: identified
    policies: [identify, log-invocation]
  - name: payments-tls
    selector: {team: payments}
    tls_ports: true
    labels: [owner]
"""


def test_requirement_missing_policies_names_the_rule(tmp_path):
    """An API without log-invocation breaks 'identified': WSG135 at its `policies`, noting the rule."""
    base(tmp_path)
    write(tmp_path, "gateway.yaml", GATEWAY)
    result = run_check(tmp_path)
    assert not result.ok
    assert found(result) == [("WSG135", "echo.yaml", 8, 1)]
    d = result.diagnostics[0]
    assert "breaks requirement 'identified': no log-invocation policy" in d.summary
    assert d.related[0].location.line == 4


def test_requirement_selected_by_labels_tls_and_label_keys(tmp_path):
    """The payments API on a plain port without an `owner` label breaks 'payments-tls' twice; the
    unlabelled API does not (the selector does not pick it)."""
    api = PAYMENTS + "  - type: log-invocation\n"
    base(tmp_path, api=api, app=APPS.replace("[Pay, Search]", "[Pay, Other]"))
    write(tmp_path, "gateway.yaml", GATEWAY)
    write(tmp_path, "apis/other.yaml", API.replace("/websocket/EchoWS/1.0", "/o").replace("EchoWS", "Other")
          + "  - type: log-invocation\n")
    result = run_check(tmp_path)
    assert found(result) == [("WSG135", "echo.yaml", 3, 1), ("WSG135", "echo.yaml", 5, 9)]
    assert {d.summary.split(": ", 1)[1] for d in result.diagnostics} == {"no label owner",
                                                                         "port 'default' serves plain ws://"}
