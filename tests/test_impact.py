"""gateway.changes.impact: keep, drain (1001) or revoke (1008), from plain configs; the plan predicts the reload."""

from __future__ import annotations

from support import PORT, api_yaml, write_config

from gateway.build.apps import AppIndex
from gateway.build.credentials import key_digest
from gateway.changes.impact import Accepted, Action, decide
from gateway.changes.plan import diff

KEY = "alpha-secret-key-1"
APP = f"kind: Application\nname: alpha\nidentifiers:\n  api_keys: [{KEY}]\n  ips: [10.0.0.0/8]\napis: [Echo]\n"
SECOND = "kind: Port\nname: second\nport: 0\nhost: 127.0.0.1\n"


def _decide(tmp_path, old_docs, new_docs, accepted):
    old = write_config(tmp_path / "old", *old_docs)
    new = write_config(tmp_path / "new", *new_docs)
    return decide(old, new, AppIndex.build(new, {}), accepted)


def _dirs(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()


BY_KEY = Accepted(port="default", api="Echo", application="alpha", identified_by="api_key", key_digest=key_digest(KEY))
BY_IP = Accepted(port="default", api="Echo", application="alpha", identified_by="ip", peer_ip="10.1.2.3")


def test_unrelated_and_throttle_changes_keep(tmp_path):
    """A description, an added API or a changed policy keeps the connection."""
    _dirs(tmp_path)
    old = (PORT, api_yaml("Echo", "/echo", "ws://127.0.0.1:1/"), APP)
    new = (PORT, api_yaml("Echo", "/echo", "ws://127.0.0.1:1/", extra="description: x\npolicies:\n"
                          "  - type: throttle\n    max_connections: 1\n"), APP, api_yaml("B", "/b", "ws://127.0.0.1:1/"))
    assert _decide(tmp_path, old, new, BY_KEY).action is Action.KEEP


def test_route_changes_drain(tmp_path):
    """Path, upstream or port removal of the connection's API drains it."""
    _dirs(tmp_path)
    old = (PORT, SECOND, api_yaml("Echo", "/echo", "ws://127.0.0.1:1/", ports="[default, second]"), APP)
    for new_api in (api_yaml("Echo", "/echo2", "ws://127.0.0.1:1/", ports="[default, second]"),
                    api_yaml("Echo", "/echo", "ws://127.0.0.1:2/", ports="[default, second]"),
                    api_yaml("Echo", "/echo", "ws://127.0.0.1:1/", ports="[second]")):
        decision = _decide(tmp_path, old, (PORT, SECOND, new_api, APP), BY_KEY)
        assert decision.action is Action.DRAIN, decision
    # Removed from the other port only: this connection (on default) stays.
    kept = api_yaml("Echo", "/echo", "ws://127.0.0.1:1/", ports="[default]")
    assert _decide(tmp_path, old, (PORT, SECOND, kept, APP), BY_KEY).action is Action.KEEP


def test_identity_changes_revoke(tmp_path):
    """A revoked key or IP, a deregistration or a removed application revokes; revocation beats draining."""
    _dirs(tmp_path)
    api = api_yaml("Echo", "/echo", "ws://127.0.0.1:1/")
    old = (PORT, api, APP)
    assert _decide(tmp_path, old, (PORT, api, APP.replace(KEY, "other-key-123")), BY_KEY).reason == "API key revoked"
    assert _decide(tmp_path, old, (PORT, api, APP.replace(KEY, "other-key-123")), BY_IP).action is Action.KEEP
    assert _decide(tmp_path, old, (PORT, api, APP.replace("10.0.0.0/8", "192.168.0.0/16")),
                   BY_IP).reason == "IP identifier revoked"
    assert _decide(tmp_path, old, (PORT, api, APP.replace("apis: [Echo]", "apis: []")),
                   BY_KEY).action is Action.REVOKE
    assert _decide(tmp_path, old, (PORT, api), BY_KEY).reason == "application removed"
    moved = api_yaml("Echo", "/moved", "ws://127.0.0.1:1/")
    assert _decide(tmp_path, old, (PORT, moved), BY_KEY).action is Action.REVOKE
    anonymous = Accepted(port="default", api="Echo", application="anonymous", identified_by="anonymous")
    assert _decide(tmp_path, old, (PORT, api), anonymous).action is Action.KEEP


def _plan_and_decision(tmp_path, old_docs, new_docs, accepted):
    old = write_config(tmp_path / "old", *old_docs)
    new = write_config(tmp_path / "new", *new_docs)
    plan = diff(old, new)
    predicted = [d for c in plan.changes for d in c.disruptions if d.selects(accepted)]
    return predicted, decide(old, new, AppIndex.build(new, {}), accepted)


def test_removed_ip_or_hostname_is_predicted_by_the_plan(tmp_path):
    """Removing the IP or hostname a connection was identified by revokes it, and the plan says so first."""
    _dirs(tmp_path)
    api = api_yaml("Echo", "/echo", "ws://127.0.0.1:1/")
    app = APP.replace("  ips: [10.0.0.0/8]\n", "  ips: [10.0.0.0/8]\n  hostnames: [client.example.com]\n")
    by_host = Accepted(port="default", api="Echo", application="alpha", identified_by="hostname",
                       hostname="client.example.com")
    for changed, accepted, reason in ((app.replace("ips: [10.0.0.0/8]", "ips: []"), BY_IP, "IP identifier revoked"),
                                      (app.replace("hostnames: [client.example.com]", "hostnames: [other.example]"),
                                       by_host, "hostname identifier revoked")):
        predicted, decision = _plan_and_decision(tmp_path, (PORT, api, app), (PORT, api, changed), accepted)
        assert (decision.action, decision.reason, decision.close_code) == (Action.REVOKE, reason, 1008)
        assert [(d.action, d.reason) for d in predicted] == [(Action.REVOKE, reason)]
        # The other identifier's connections are untouched by this change.
        other = by_host if accepted is BY_IP else BY_IP
        assert _plan_and_decision(tmp_path, (PORT, api, app), (PORT, api, changed), other)[1].action is Action.KEEP


def test_removing_an_api_with_its_registrations_drains(tmp_path):
    """An API removed together with the registrations to it drains its connections with 1001, revoking none."""
    _dirs(tmp_path)
    echo, other = api_yaml("Echo", "/echo", "ws://127.0.0.1:1/"), api_yaml("Other", "/other", "ws://127.0.0.1:1/")
    app = APP.replace("apis: [Echo]", "apis: [Echo, Other]")
    predicted, decision = _plan_and_decision(tmp_path, (PORT, echo, other, app),
                                             (PORT, other, app.replace("[Echo, Other]", "[Other]")), BY_KEY)
    assert (decision.action, decision.close_code, decision.reason) == (Action.DRAIN, 1001, "API removed")
    assert decision.close_reason == "going away: API removed"
    assert [(d.action, d.cause) for d in predicted] == [(Action.DRAIN, ("API", "Echo"))]


def test_deregistering_from_an_api_that_stays_revokes(tmp_path):
    """An application taken off an API that stays loses its connections to it at once (1008), the reason says why."""
    _dirs(tmp_path)
    echo, other = api_yaml("Echo", "/echo", "ws://127.0.0.1:1/"), api_yaml("Other", "/other", "ws://127.0.0.1:1/")
    app = APP.replace("apis: [Echo]", "apis: [Echo, Other]")
    predicted, decision = _plan_and_decision(tmp_path, (PORT, echo, other, app),
                                             (PORT, echo, other, app.replace("[Echo, Other]", "[Other]")), BY_KEY)
    assert (decision.action, decision.close_code) == (Action.REVOKE, 1008)
    assert decision.close_reason == "revoked: application deregistered from API 'Echo'"
    assert [(d.action, d.field) for d in predicted] == [(Action.REVOKE, "apis")]
    on_other = Accepted(port="default", api="Other", application="alpha", identified_by="api_key",
                        key_digest=key_digest(KEY))
    assert _plan_and_decision(tmp_path, (PORT, echo, other, app),
                              (PORT, echo, other, app.replace("[Echo, Other]", "[Other]")), on_other)[1] \
        .action is Action.KEEP
