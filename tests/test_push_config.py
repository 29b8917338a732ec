"""Push in the config: the schema through the models, the push rules' located diagnostics, and plan's view of
push credentials and group rules."""

from __future__ import annotations

from pathlib import Path

from push_support import PUSH_GATEWAY, push_api
from support import PORT

from gateway.changes.impact import Impact
from gateway.changes.plan import diff, render_text
from gateway.config import check


def _write(root: Path, *documents: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text("".join(d if d.startswith("---") else "---\n" + d for d in documents))
    return root


def _codes(root: Path, env: dict[str, str] | None = None) -> list[tuple[str, int, int]]:
    result = check([root], env=env or {})
    return [(d.code, d.location.line, d.location.col) for d in result.diagnostics if d.location is not None]


def test_push_rules_name_file_line_and_column(tmp_path) -> None:
    """Plain-text keys warn, duplicate names and claim rules without JWT are errors, each at its own place."""
    api = push_api("Track", "/track", "ws://127.0.0.1:1", groups="- from: claim\n  name: sub\n",
                   push_extra="")
    api = api.replace("      key: push-key-for-tests\n",
                      "      key: push-key-for-tests\n    - name: backend\n      key: {env: PUSH_KEY}\n")
    root = _write(tmp_path / "c", PORT, api)
    codes = _codes(root)
    lines = (root / "gateway.yaml").read_text().splitlines()
    line_of = {code: line for code, line, _ in codes}
    assert {"WSG280", "WSG282", "WSG136", "WSG137", "WSG203"} <= set(line_of)
    assert "key: push-key-for-tests" in lines[line_of["WSG280"] - 1]
    assert "- name: backend" in lines[line_of["WSG136"] - 1] and line_of["WSG136"] > line_of["WSG280"]
    assert "from: claim" in lines[line_of["WSG137"] - 1]
    assert check([root], env={}).config is None  # errors refuse the config


def test_group_rule_model_checks(tmp_path) -> None:
    """A group rule needs a name (except from the application), `{value}` in its template and a valid pattern."""
    for rule, words in (("- from: query\n", "needs `name`"),
                        ("- from: header\n  name: X-Shipment\n  group: fixed\n", "{value}"),
                        ("- from: query\n  name: s\n  pattern: '('\n", "regular expression")):
        root = _write(tmp_path / str(abs(hash(rule))), PORT, PUSH_GATEWAY,
                      push_api("Track", "/track", "ws://127.0.0.1:1", groups=rule))
        result = check([root], env={})
        assert result.config is None
        assert any(words in d.summary or words in (d.detail or "") for d in result.diagnostics), result.diagnostics


def test_plan_shows_push_changes_and_a_revoked_credential_disrupts_no_one(tmp_path) -> None:
    """Removing a push credential and changing a group rule are updates that disrupt no live connection;
    the key never appears in the plan."""
    groups = "- from: query\n  name: shipment\n"
    old = check([_write(tmp_path / "a", PORT, PUSH_GATEWAY, push_api("Track", "/track", "ws://127.0.0.1:1",
                                                                      groups=groups))], env={}).config
    new_api = push_api("Track", "/track", "ws://127.0.0.1:1", groups="- from: query\n  name: parcel\n")
    new_api = new_api.replace("  credentials:\n    - name: backend\n      key: push-key-for-tests\n",
                              "  credentials: []\n")
    new = check([_write(tmp_path / "b", PORT, PUSH_GATEWAY, new_api)], env={}).config
    assert old is not None and new is not None
    impact = Impact(old, new, None)  # type: ignore[arg-type]
    plan = diff(old, new, impact.all)
    text = render_text(plan)
    assert "push.credentials" in text and "1 removed" in text
    assert "push.groups[0].name" in text and '"parcel"' in text
    assert "push-key-for-tests" not in text
    assert not impact.all  # nothing disruptive
    assert "Plan: 0 to add, 1 to change, 0 to destroy." in text
