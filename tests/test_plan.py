"""`diff(old, new) -> Plan` and its renderers, against golden outputs in tests/golden/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from config_helpers import API, APP, PORT, write

from gateway.changes.impact import Action, Disruption
from gateway.changes.plan import diff, render_json, render_text
from gateway.config import check

GOLDEN = Path(__file__).parent / "golden"
KEY_A = "sha256:434f4cad53d8c1fcbb91e478d081844b190f84c8a9ac3975e671aa6c9e7cc93c"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("WSGATE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path}; set WSGATE_UPDATE_GOLDEN=1 to accept"


@pytest.fixture
def trees(tmp_path, monkeypatch):
    """An old and a new config side by side, checked with relative paths so locations are stable."""
    monkeypatch.chdir(tmp_path)
    old, new = Path("old"), Path("new")
    for root in (old, new):
        write(root, "ports.yaml", PORT)
        write(root, "apis/echo.yaml", API)
        write(root, "apps/demo.yaml", APP)
    return old, new


def checked(root: Path):
    result = check([root], env={})
    assert result.ok, [d.headline() for d in result.diagnostics]
    return result.config


def test_identical_configs_give_no_changes(trees):
    """Equal trees plan to nothing."""
    old, new = trees
    plan = diff(checked(old), checked(new))
    assert plan.empty
    golden("plan_no_changes.txt", render_text(plan))


def test_plan_text_and_json(trees):
    """Creates, updates with old → new per field, destroys, disruption marks and the summary line."""
    old, new = trees
    write(old, "apis/gone.yaml", API.replace("EchoWS", "Gone").replace("/1.0", "/gone"))
    write(new, "ports.yaml", PORT.replace("8082", "8083") + "---\nkind: Port\nname: admin\nport: 9000\n")
    write(new, "apis/echo.yaml", API.replace("/1.0", "/2.0") + "  - type: throttle\n    max_connections: 5\n")
    write(new, "apps/demo.yaml", APP.replace(KEY_A, "new-plain-key").replace("apis: [EchoWS]", "apis: []"))
    plan = diff(checked(old), checked(new))
    assert (plan.count("create"), plan.count("update"), plan.count("destroy")) == (1, 3, 1)
    text = render_text(plan)
    assert "new-plain-key" not in text and KEY_A not in text
    golden("plan_changes.txt", text)
    rendered = render_json(plan)
    assert "new-plain-key" not in rendered and KEY_A not in rendered
    data = json.loads(rendered)
    assert data["old_digest"].startswith("sha256:") and data["old_digest"] != data["new_digest"]
    data["old_digest"] = data["new_digest"] = "<digest>"  # digests follow model additions; compare the rest
    golden("plan_changes.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def test_disruptions_name_what_they_touch(trees):
    """Each disruptive change carries a selector and close code that a live gateway can count."""
    old, new = trees
    write(new, "apps/demo.yaml", APP.replace("apis: [EchoWS]", "apis: []"))
    plan = diff(checked(old), checked(new))
    (change,) = plan.changes
    assert change.disruptions == (
        Disruption(Action.REVOKE, "application deregistered from API 'EchoWS'",
                   {"application": "demo-app", "api": "EchoWS"}, ("Application", "demo-app"), "apis"),
    )
    assert change.disruptions[0].close_code == 1008
    counted = plan.with_live_counts(lambda d: 7)
    assert counted.changes[0].disruptions[0].live_connections == 7
    assert "7 live connections" in render_text(counted)


def test_non_disruptive_update(trees):
    """A throttle limit change is an update that disturbs nobody."""
    old, new = trees
    write(old, "apis/echo.yaml", API + "  - type: throttle\n    max_connections: 5\n")
    write(new, "apis/echo.yaml", API + "  - type: throttle\n    max_connections: 1\n")
    plan = diff(checked(old), checked(new))
    (change,) = plan.changes
    assert change.action == "update" and not change.disruptive
    assert [(f.path, f.old, f.new) for f in change.fields] == [("policies[throttle per api].max_connections", 5, 1)]


def test_from_nothing_everything_is_created(trees):
    """With no old config, every resource is a create."""
    _, new = trees
    plan = diff(None, checked(new))
    assert [c.action for c in plan.changes] == ["create"] * 3
    assert json.loads(render_json(plan))["summary"] == {"add": 3, "change": 0, "destroy": 0, "disruptive": 0}


def test_adding_a_port_to_an_api_disturbs_nobody(trees):
    """An API gaining a port is an update without disruption or marks."""
    old, new = trees
    write(new, "ports.yaml", PORT + "---\nkind: Port\nname: b\nport: 9001\n")
    write(new, "apis/echo.yaml", API.replace("ports: [default]", "ports: [default, b]"))
    plan = diff(checked(old), checked(new))
    api = next(c for c in plan.changes if c.kind == "API")
    assert not api.disruptive and not any(f.disruptive for f in api.fields)
    assert not plan.disruptive
