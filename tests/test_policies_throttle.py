"""The throttle policy: active-connection limits per API and per application."""

from __future__ import annotations

from policy_helpers import connection, policy_build, upgrade_request

from gateway.config.models import ThrottlePolicy
from gateway.policies.base import ApplicationRef, Rejection
from gateway.policies.state import PolicyState
from gateway.policies.throttle import Throttle


def throttle(state: PolicyState, api: str = "Echo", **spec) -> Throttle:
    return Throttle(ThrottlePolicy(type="throttle", **spec), policy_build(api, state=state))


def test_per_api_limit():
    """Past `max_connections` active connections of the API, the next upgrade gets 503."""
    policy = throttle(PolicyState(), max_connections=2)
    conns = [connection() for _ in range(3)]
    assert policy.on_upgrade(upgrade_request(), conns[0]) is None
    assert policy.on_upgrade(upgrade_request(), conns[1]) is None
    refused = policy.on_upgrade(upgrade_request(), conns[2])
    assert isinstance(refused, Rejection)
    assert (refused.status, refused.error) == (503, "throttled")
    assert "API Echo" in refused.reason


def test_per_api_limits_are_separate_per_api():
    """Two APIs sharing one state count separately."""
    state = PolicyState()
    assert throttle(state, "Echo", max_connections=1).on_upgrade(upgrade_request(), connection("Echo")) is None
    assert throttle(state, "Chat", max_connections=1).on_upgrade(upgrade_request(), connection("Chat")) is None


def test_retry_after_header():
    """A 503 carries the configured Retry-After."""
    policy = throttle(PolicyState(), max_connections=1, retry_after=17)
    policy.on_upgrade(upgrade_request(), connection())
    refused = policy.on_upgrade(upgrade_request(), connection())
    assert isinstance(refused, Rejection)
    assert refused.headers == (("Retry-After", "17"),)


def test_per_application_limit():
    """With `per: application` each application has its own budget."""
    policy = throttle(PolicyState(), max_connections=1, per="application")

    def conn_of(app: str):
        conn = connection()
        conn.application = ApplicationRef(app, "api_key")
        return conn

    assert policy.on_upgrade(upgrade_request(), conn_of("alpha")) is None
    assert policy.on_upgrade(upgrade_request(), conn_of("beta")) is None
    refused = policy.on_upgrade(upgrade_request(), conn_of("alpha"))
    assert isinstance(refused, Rejection) and refused.status == 503
    assert "application alpha" in refused.reason


def test_unidentified_connections_share_the_anonymous_bucket():
    """Connections without an application share one bucket, apart from named applications."""
    policy = throttle(PolicyState(), max_connections=1, per="application")
    assert policy.on_upgrade(upgrade_request(), connection()) is None
    named = connection()
    named.application = ApplicationRef("alpha", "ip")
    assert policy.on_upgrade(upgrade_request(), named) is None
    refused = policy.on_upgrade(upgrade_request(), connection())
    assert isinstance(refused, Rejection) and refused.status == 503


def test_release_frees_the_slot_exactly_once():
    """`conn.release()` gives the slot back once; a second release does not free another connection's slot."""
    state = PolicyState()
    policy = throttle(state, max_connections=1)
    first = connection()
    assert policy.on_upgrade(upgrade_request(), first) is None
    first.release()
    second = connection()
    assert policy.on_upgrade(upgrade_request(), second) is None
    first.release()  # idempotent: must not free the second connection's slot
    assert isinstance(policy.on_upgrade(upgrade_request(), connection()), Rejection)
    assert state.shared.slots.active["Echo/<api>"] == 1
    second.release()
    assert "Echo/<api>" not in state.shared.slots.active


def test_refused_upgrade_takes_no_slot():
    """A refused upgrade registers nothing to release and does not count."""
    state = PolicyState()
    policy = throttle(state, max_connections=1)
    policy.on_upgrade(upgrade_request(), connection())
    refused_conn = connection()
    assert isinstance(policy.on_upgrade(upgrade_request(), refused_conn), Rejection)
    refused_conn.release()
    assert state.shared.slots.active["Echo/<api>"] == 1


def test_counts_survive_a_rebuilt_policy():
    """A reload builds a new policy object but finds the same counts in the shared state."""
    state = PolicyState()
    throttle(state, max_connections=1).on_upgrade(upgrade_request(), connection())
    assert isinstance(throttle(state, max_connections=1).on_upgrade(upgrade_request(), connection()), Rejection)
