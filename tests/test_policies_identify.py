"""The identify policy, called directly with real upgrade requests and connection contexts."""

from __future__ import annotations

from policy_helpers import app_index, application, connection, policy_build, settle, upgrade_request

from gateway.build.credentials import key_digest
from gateway.config.models import IdentifyPolicy
from gateway.policies.base import ApplicationRef, Rejection
from gateway.policies.identify import Identify

KEY = "alpha-secret-key"


def identify(apps=None, api: str = "Echo", **spec) -> Identify:
    apps = apps if apps is not None else app_index(
        application("alpha", apis=["Echo"], api_keys=[KEY]),
        application("outsider", apis=["Other"], api_keys=["outsider-key"]),
    )
    return Identify(IdentifyPolicy(type="identify", **spec), policy_build(api, apps))


def test_query_key_with_any_case_of_the_parameter_name():
    """The key is accepted in the query under any spelling of `x-Gateway-APIKey`."""
    for name in ("x-Gateway-APIKey", "X-GATEWAY-APIKEY", "x-gateway-apikey"):
        conn = connection(query=f"{name}={KEY}")
        assert identify().on_upgrade(upgrade_request(query=f"{name}={KEY}"), conn) is None
        assert conn.application == ApplicationRef("alpha", "api_key")


def test_header_key():
    """The key is accepted in the `x-Gateway-APIKey` header by default."""
    conn = connection()
    assert identify().on_upgrade(upgrade_request(headers=[("X-Gateway-APIKey", KEY)]), conn) is None
    assert conn.application == ApplicationRef("alpha", "api_key")


def test_header_key_ignored_when_header_is_off():
    """With `api_key_header: false` a key in the header counts as no key."""
    conn = connection()
    result = identify(api_key_header=False).on_upgrade(upgrade_request(headers=[("X-Gateway-APIKey", KEY)]), conn)
    assert result == Rejection(401, "unauthorized", "missing API key")
    assert conn.application is None


def test_two_keys_are_refused():
    """Two keys (query and header, even equal) are refused with 401."""
    for query, headers in ((f"x-Gateway-APIKey={KEY}", [("x-Gateway-APIKey", KEY)]),
                           (f"x-Gateway-APIKey={KEY}&X-GATEWAY-APIKEY={KEY}", [])):
        result = identify().on_upgrade(upgrade_request(query=query, headers=headers), connection())
        assert isinstance(result, Rejection)
        assert (result.status, result.reason) == (401, "more than one API key presented")


def test_missing_and_unknown_key_reasons():
    """A missing key and an unknown key get distinct reasons, neither containing the key."""
    missing = identify().on_upgrade(upgrade_request(), connection())
    unknown = identify().on_upgrade(upgrade_request(query="x-Gateway-APIKey=wrong-key"), connection())
    assert missing == Rejection(401, "unauthorized", "missing API key")
    assert unknown == Rejection(401, "unauthorized", "unknown API key")
    assert "wrong-key" not in repr(unknown)


def test_unregistered_application_refused_without_naming_the_key():
    """A known key of an application not registered to the API gets 401 naming the app, not the key."""
    conn = connection()
    result = identify().on_upgrade(upgrade_request(query="x-Gateway-APIKey=outsider-key"), conn)
    assert isinstance(result, Rejection) and result.status == 401
    assert "outsider" in result.reason and "Echo" in result.reason
    assert "outsider-key" not in repr(result)
    assert conn.application is None


def test_identified_by_ip():
    """With `by: [ip]` the peer address names the application."""
    apps = app_index(application("office", ips=["127.0.0.0/8"]))
    conn = connection()
    assert identify(apps, by=["ip"]).on_upgrade(upgrade_request(peer=("127.0.0.1", 1)), conn) is None
    assert conn.application == ApplicationRef("office", "ip")
    refused = identify(apps, by=["ip"]).on_upgrade(upgrade_request(peer=("192.0.2.1", 1)), connection())
    assert isinstance(refused, Rejection) and refused.status == 401


def test_key_tried_before_ip_falls_back_to_ip():
    """With `by: [api_key, ip]` an unknown key still lets the address identify the client."""
    apps = app_index(application("office", ips=["127.0.0.1"]))
    conn = connection()
    result = identify(apps, by=["api_key", "ip"]).on_upgrade(
        upgrade_request(query="x-Gateway-APIKey=nope", peer=("127.0.0.1", 1)), conn)
    assert result is None
    assert conn.application == ApplicationRef("office", "ip")


def test_identified_by_hostname_through_the_resolver():
    """With `by: [hostname]` the reverse-resolved, forward-confirmed name of 127.0.0.1 (localhost) is used."""
    apps = app_index(application("local", hostnames=["LOCALHOST."]))
    conn = connection()
    assert settle(identify(apps, by=["hostname"]).on_upgrade(upgrade_request(peer=("127.0.0.1", 1)), conn)) is None
    assert conn.application == ApplicationRef("local", "hostname")


def test_unknown_hostname_refused():
    """A peer whose name matches no application is refused with 401."""
    apps = app_index(application("remote", hostnames=["client.example.com"]))
    result = settle(identify(apps, by=["hostname"]).on_upgrade(upgrade_request(peer=("127.0.0.1", 1)), connection()))
    assert isinstance(result, Rejection) and result.status == 401
    assert "API key" not in result.reason  # keys are not an identifier of this API


def test_allow_anonymous():
    """With `allow_anonymous` an unidentified client gets in as the anonymous application."""
    conn = connection()
    assert identify(allow_anonymous=True).on_upgrade(upgrade_request(), conn) is None
    assert conn.application == ApplicationRef("anonymous", "anonymous")


def test_key_digest_in_the_identity_never_the_key():
    """An identified key leaves its digest in the connection's Identity, and the key appears nowhere in it or
    in the metadata."""
    conn = connection(query=f"x-Gateway-APIKey={KEY}&room=1")
    assert identify().on_upgrade(upgrade_request(query=f"x-Gateway-APIKey={KEY}&room=1"), conn) is None
    assert conn.identity is not None and conn.identity.key_digest == key_digest(KEY)
    assert conn.identity.application == ApplicationRef("alpha", "api_key")
    assert KEY not in repr(conn.identity) and KEY not in repr(conn.metadata)
