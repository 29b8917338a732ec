"""Routing on a request header or query parameter beside host and path: `match_headers` and `match_query`."""

from __future__ import annotations

from config_helpers import PORT as CONFIG_PORT
from config_helpers import found, run_check, write
from support import (
    PORT,
    api_yaml,
    gw_url,
    http_request,
    recording_backend,
    running_gateway,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect


async def test_header_and_query_conditions_pick_the_most_specific_api(tmp_path):
    """One path, four APIs: the header, the query parameter, both (most specific wins) and neither reach four
    different backends; a prefix route with a header condition falls through to the plain one without it."""
    async with recording_backend() as plain, recording_backend() as v2, recording_backend() as beta, \
            recording_backend() as both:
        config = write_config(
            tmp_path, PORT,
            api_yaml("Plain", "/chat", plain.url + "/plain"),
            api_yaml("V2", "/chat", v2.url + "/v2", extra='match_headers: {X-Version: "2"}'),
            api_yaml("Beta", "/chat", beta.url + "/beta", extra='match_query: {channel: beta}'),
            api_yaml("Both", "/chat", both.url + "/both",
                     extra='match_headers: {x-version: "2"}\nmatch_query: {channel: beta}'),
        )
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")):
                pass
            async with connect(gw_url(gw, "/chat"), additional_headers={"X-Version": "2"}):
                pass
            async with connect(gw_url(gw, "/chat?channel=beta")):
                pass
            async with connect(gw_url(gw, "/chat?channel=beta"), additional_headers={"X-Version": "2"}):
                pass
            async with connect(gw_url(gw, "/chat?channel=alpha"), additional_headers={"X-Version": "3"}):
                pass
            assert [r.path for r in plain.requests] == ["/plain", "/plain?channel=alpha"]
            assert [r.path for r in v2.requests] == ["/v2"]
            assert [r.path for r in beta.requests] == ["/beta?channel=beta"]
            assert [r.path for r in both.requests] == ["/both?channel=beta"]


async def test_a_conditioned_route_alone_answers_404_to_requests_that_miss_it(tmp_path):
    """A path served only for `X-Tenant: acme` is not found for other tenants (404), and found for acme."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("Acme", "/t", backend.url + "/acme",
                                                       extra="match_headers: {X-Tenant: acme}"))
        async with running_gateway(config) as gw:
            other = await http_request(gw_url(gw, "/t"), upgrade_request("/t", extra="X-Tenant: other\r\n"))
            assert other.status == 404
            async with connect(gw_url(gw, "/t"), additional_headers={"X-Tenant": "acme"}):
                pass
            assert [r.path for r in backend.requests] == ["/acme"]


API_TEMPLATE = """\
---
kind: API
name: {name}
path: /chat
ports: [default]
{extra}upstream:
  endpoints:
    - url: ws://backend.internal:8765/{name}
"""


def test_two_routes_with_the_same_conditions_are_refused(tmp_path):
    """Two APIs on one path with the same header condition (any spelling of its name) always match the same
    requests: WSG111 at the second one's path; a different value is fine (WSG201: no identify, not at issue)."""
    write(tmp_path, "ports.yaml", CONFIG_PORT)
    write(tmp_path, "apis.yaml",
          API_TEMPLATE.format(name="a", extra='match_headers: {X-Version: "2"}\n')
          + API_TEMPLATE.format(name="b", extra='match_headers: {x-version: "2"}\n')
          + API_TEMPLATE.format(name="c", extra='match_headers: {x-version: "3"}\n'))
    assert [d for d in found(run_check(tmp_path)) if d[0] != "WSG201"] == [("WSG111", "apis.yaml", 13, 7)]
