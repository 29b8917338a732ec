"""The pure reload decisions: keep, drain (1001) or revoke (1008), from plain configs and values."""

from __future__ import annotations

from support import PORT, api_yaml, write_config

from gateway.apps import AppIndex
from gateway.credentials import key_digest
from gateway.reload import Accepted, Action, decide

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
