"""The origin policy: exact and wildcard Origin allow-lists against cross-site WebSocket hijacking."""

from __future__ import annotations

from policy_helpers import connection, policy_build, upgrade_request

from gateway.config.models import OriginPolicy
from gateway.policies.base import Rejection
from gateway.policies.origin import Origin


def decide(origins: list[str], allow=("https://app.example.com", "https://*.example.org"), **spec):
    policy = Origin(OriginPolicy(type="origin", allow=list(allow), **spec), policy_build())
    return policy.on_upgrade(upgrade_request(headers=[("Origin", o) for o in origins]), connection())


def refused(result) -> bool:
    return isinstance(result, Rejection) and result.status == 403 and result.error == "forbidden"


def test_exact_origin():
    """An exact entry allows that origin (any case, trailing slash ignored) and nothing else."""
    assert decide(["https://app.example.com"]) is None
    assert decide(["HTTPS://App.Example.COM/"]) is None
    assert refused(decide(["http://app.example.com"]))
    assert refused(decide(["https://app.example.com:8443"]))
    assert refused(decide(["https://other.example.com"]))


def test_wildcard_matches_subdomains():
    """`https://*.example.org` allows one or more labels in place of `*`."""
    assert decide(["https://chat.example.org"]) is None
    assert decide(["https://a.b-c.example.org"]) is None


def test_wildcard_refuses_lookalikes_and_the_bare_domain():
    """The wildcard does not match `example.org.evil.net`, the bare domain, another scheme or a smuggled path."""
    assert refused(decide(["https://example.org.evil.net"]))
    assert refused(decide(["https://chat.example.org.evil.net"]))
    assert refused(decide(["https://example.org"]))
    assert refused(decide(["http://chat.example.org"]))
    assert refused(decide(["https://evil.net/.example.org"]))
    assert refused(decide(["https://evilexample.org"]))


def test_wildcard_refuses_lookalikes_for_example_com():
    """With `https://*.example.com`, `https://example.com.evil.net` and `https://example.com` are refused."""
    allow = ("https://*.example.com",)
    assert decide(["https://www.example.com"], allow) is None
    assert refused(decide(["https://example.com.evil.net"], allow))
    assert refused(decide(["https://example.com"], allow))


def test_missing_origin():
    """No Origin header is refused by default and allowed with `allow_missing`."""
    result = decide([])
    assert refused(result) and "required" in result.reason
    assert decide([], allow_missing=True) is None


def test_two_origin_headers_refused():
    """Two Origin headers are refused even if both are allowed, and even with `allow_missing`."""
    result = decide(["https://app.example.com", "https://app.example.com"], allow_missing=True)
    assert refused(result) and "more than one" in result.reason


def test_refusal_names_the_origin():
    """The 403 reason names the refused origin."""
    result = decide(["https://evil.net"])
    assert refused(result) and "https://evil.net" in result.reason
