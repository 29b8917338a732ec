"""Limits per application on a live gateway: throttle and rate-limit for listed applications, and tiers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from config_helpers import found, run_check, write
from support import (
    PORT,
    api_yaml,
    app_yaml,
    gw_url,
    http_request,
    recording_backend,
    running_gateway,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect

KEYS = {"acme": "acme-key-0123456789", "other": "other-key-0123456789", "third": "third-key-0123456789"}


def apps() -> list[str]:
    return [app_yaml(key, name) for name, key in KEYS.items()]


async def refused_status(gw, app: str) -> int:
    response = await http_request(gw_url(gw, "/echo"),
                                  upgrade_request("/echo", extra=f"x-Gateway-APIKey: {KEYS[app]}\r\n"))
    return response.status


def as_app(gw, app: str):
    return connect(gw_url(gw, "/echo"), additional_headers={"x-Gateway-APIKey": KEYS[app]})


async def test_throttle_for_listed_applications_leaves_the_others_alone(tmp_path):
    """`applications: [acme]` with one connection per API: acme's second connection gets 503, while `other`
    opens three (it is not limited at all)."""
    policies = """\
policies:
  - type: identify
  - type: throttle
    max_connections: 1
    applications: [acme]
"""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url, extra=policies), *apps())
        async with running_gateway(config) as gw, AsyncExitStack() as stack:
            await stack.enter_async_context(as_app(gw, "acme"))
            assert await refused_status(gw, "acme") == 503
            for _ in range(3):
                await stack.enter_async_context(as_app(gw, "other"))


async def test_partner_tier_gets_its_own_connection_limit_on_the_same_api(tmp_path):
    """Per application, one connection each, but the partner tier's acme gets two: acme's third and other's second
    get 503, on one API."""
    policies = """\
policies:
  - type: identify
  - type: throttle
    per: application
    max_connections: 1
    tiers:
      partner: {applications: [acme], max_connections: 2}
"""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url, extra=policies), *apps())
        async with running_gateway(config) as gw, AsyncExitStack() as stack:
            for _ in range(2):
                await stack.enter_async_context(as_app(gw, "acme"))
            assert await refused_status(gw, "acme") == 503
            await stack.enter_async_context(as_app(gw, "other"))
            assert await refused_status(gw, "other") == 503


async def test_partner_tier_gets_its_own_message_rate(tmp_path):
    """A rate limit of one message (a bucket that refills in ~17 minutes) with a partner tier of three: the free
    application's second message is answered with the error, the partner's fourth."""
    policies = """\
policies:
  - type: identify
  - type: rate-limit
    per: application
    messages_per_second: 0.001
    burst_messages: 1
    on_exceed: drop
    error_message: limited
    tiers:
      partner: {applications: [acme], burst_messages: 3}
"""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url, extra=policies), *apps())
        async with running_gateway(config) as gw:
            async with as_app(gw, "other") as ws:
                answers = []
                for i in range(2):
                    await ws.send(f"m{i}")
                    answers.append(await ws.recv())
                assert answers == ["m0", "limited"]
            async with as_app(gw, "acme") as ws:
                answers = []
                for i in range(4):
                    await ws.send(f"m{i}")
                    answers.append(await ws.recv())
                assert answers == ["m0", "m1", "m2", "limited"]


API = """\
kind: API
name: Echo
path: /echo
ports: [default]
upstream:
  endpoints:
    - url: ws://backend.internal:8765/echo
policies:
{policies}"""
CONFIG_PORT = "kind: Port\nname: default\nport: 8082\n"


def check_policies(tmp_path, policies: str) -> list[tuple[str, str, int, int]]:
    write(tmp_path, "ports.yaml", CONFIG_PORT)
    write(tmp_path, "api.yaml", API.format(policies=policies))
    write(tmp_path, "apps.yaml", "\n---\n".join(apps()))
    return found(run_check(tmp_path))


def test_validate_unknown_application_in_a_limit(tmp_path):
    """An application name no Application document declares, in `applications` or a tier: WSG191 at the name."""
    diagnostics = check_policies(tmp_path, """\
  - type: identify
  - type: throttle
    max_connections: 1
    applications: [acme, acmee]
    tiers:
      gold: {applications: [nobody], max_connections: 3}
""")
    assert diagnostics == [("WSG191", "api.yaml", 12, 26), ("WSG191", "api.yaml", 14, 29)]


def test_validate_overlapping_tiers(tmp_path):
    """An application in two tiers of one policy: WSG192 at its second listing."""
    diagnostics = check_policies(tmp_path, """\
  - type: identify
  - type: rate-limit
    messages_per_second: 5
    tiers:
      gold: {applications: [acme], messages_per_second: 50}
      silver: {applications: [other, acme], messages_per_second: 10}
""")
    assert diagnostics == [("WSG192", "api.yaml", 14, 38)]


def test_validate_per_application_limit_before_identify(tmp_path):
    """A throttle naming applications before the identify policy: WSG231 (every connection is anonymous there); a
    rate-limit before it is fine (it counts after every upgrade step)."""
    diagnostics = check_policies(tmp_path, """\
  - type: throttle
    max_connections: 1
    applications: [acme]
  - type: rate-limit
    messages_per_second: 5
    applications: [acme]
  - type: identify
""")
    assert diagnostics == [("WSG231", "api.yaml", 11, 5)]


def test_validate_rate_limit_tier_bursts(tmp_path):
    """A tier's burst without a rate anywhere is WSG194; a tier's byte burst below the largest message is WSG140."""
    diagnostics = check_policies(tmp_path, """\
  - type: identify
  - type: rate-limit
    messages_per_second: 5
    tiers:
      gold: {applications: [acme], burst_bytes: 10}
""")
    assert diagnostics == [("WSG140", "api.yaml", 13, 49), ("WSG194", "api.yaml", 13, 49)]


def test_validate_named_application_not_registered_to_the_api(tmp_path):
    """A tier naming an application registered to another API only: WSG272 (the limit never applies to it)."""
    write(tmp_path, "more.yaml", "kind: Application\nname: elsewhere\napis: [Other]\n")
    diagnostics = check_policies(tmp_path, """\
  - type: identify
  - type: throttle
    max_connections: 1
    tiers:
      gold: {applications: [elsewhere], max_connections: 3}
""")
    assert [d for d in diagnostics if d[0] == "WSG272"] == [("WSG272", "api.yaml", 13, 29)]
