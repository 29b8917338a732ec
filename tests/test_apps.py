"""The application index: keys (plain, sha256, env), addresses, hostnames, registrations."""

from __future__ import annotations

import hashlib

from policy_helpers import app_index, application

from gateway.build.credentials import configured_digest, key_digest
from gateway.config.models import EnvKey


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_plain_key_identifies_its_application():
    """A plain-text configured key finds its application; another key finds none."""
    index = app_index(application("alpha", api_keys=["alpha-key"]))
    assert index.by_api_key("alpha-key") == "alpha"
    assert index.by_api_key("alpha-key-2") is None


def test_index_holds_digests_not_keys():
    """The index stores the SHA-256 of a plain key, never the key itself."""
    index = app_index(application("alpha", api_keys=["alpha-key"]))
    assert set(index.keys) == {sha("alpha-key")}
    assert index.key_digests("alpha") == frozenset({sha("alpha-key")})
    assert "alpha-key" not in repr(index)


def test_sha256_key_matches_the_presented_key():
    """A `sha256:<hex>` entry matches the key whose hash it is, not the hex string itself."""
    index = app_index(application("alpha", api_keys=[f"sha256:{sha('hashed-secret')}"]))
    assert index.by_api_key("hashed-secret") == "alpha"
    assert index.by_api_key(sha("hashed-secret")) is None


def test_env_key_reads_the_variable():
    """An `{env: VAR}` entry takes the variable's value as the key."""
    index = app_index(application("alpha", api_keys=[EnvKey(env="ALPHA_KEY")]), env={"ALPHA_KEY": "from-env"})
    assert index.by_api_key("from-env") == "alpha"


def test_unset_or_empty_env_key_matches_nothing():
    """An env key whose variable is unset or empty identifies no one, not even an empty key."""
    for env in ({}, {"ALPHA_KEY": ""}):
        index = app_index(application("alpha", api_keys=[EnvKey(env="ALPHA_KEY")]), env=env)
        assert index.key_digests("alpha") == frozenset()
        assert index.by_api_key("") is None
    assert configured_digest(EnvKey(env="ALPHA_KEY"), {}) is None


def test_key_digest_is_hex_sha256():
    """`key_digest` is the hex SHA-256 of the UTF-8 key."""
    assert key_digest("clé") == hashlib.sha256("clé".encode()).hexdigest()


def test_single_ip_and_cidr():
    """A single address and a CIDR network both identify their application."""
    index = app_index(application("one", ips=["192.0.2.7"]), application("net", ips=["198.51.100.0/24"]))
    assert index.by_ip("192.0.2.7") == "one"
    assert index.by_ip("192.0.2.8") is None
    assert index.by_ip("198.51.100.200") == "net"
    assert index.by_ip("not-an-ip") is None


def test_most_specific_network_wins():
    """A /32 inside a /8 wins over the /8, whatever the order of the applications."""
    index = app_index(application("wide", ips=["10.0.0.0/8"]), application("narrow", ips=["10.1.2.3/32"]))
    assert index.by_ip("10.1.2.3") == "narrow"
    assert index.by_ip("10.1.2.4") == "wide"


def test_ipv4_mapped_ipv6_peer_matches_ipv4_rule():
    """A dual-stack peer `::ffff:10.1.2.3` matches an IPv4 rule."""
    index = app_index(application("v4", ips=["10.1.2.0/24"]), application("v6", ips=["2001:db8::/32"]))
    assert index.by_ip("::ffff:10.1.2.3") == "v4"
    assert index.by_ip("2001:db8::1") == "v6"
    assert index.by_ip("2001:db9::1") is None


def test_hostnames_ignore_case_and_trailing_dot():
    """Hostnames compare without case and without a trailing dot, on both sides."""
    index = app_index(application("named", hostnames=["Client.Example.COM."]))
    assert index.by_hostname("client.example.com") == "named"
    assert index.by_hostname("CLIENT.example.com.") == "named"
    assert index.by_hostname("other.example.com") is None


def test_registration():
    """An application is registered only to the APIs it lists."""
    index = app_index(application("alpha", apis=["Echo", "Chat"]), application("beta", apis=[]))
    assert index.is_registered("alpha", "Chat")
    assert not index.is_registered("alpha", "Other")
    assert not index.is_registered("beta", "Echo")
    assert not index.is_registered("nobody", "Echo")
