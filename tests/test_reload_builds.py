"""One build per reload: the runtime serves with what ``gateway.build.pipeline`` compiled, and decides disruptions once.

The counts come from ``gateway.common.build_counts`` (a counter bumped wherever an
artefact is made from a config), read as a difference across one step.
"""

from __future__ import annotations

import ssl
from collections import Counter
from pathlib import Path

import pytest
import trustme
from support import PORT, api_yaml, echo_backend, gw_url, http_request, running_gateway, upgrade_request
from websockets.asyncio.client import connect

from gateway.build.origins import origin_pattern
from gateway.build.pipeline import build
from gateway.common.build_counts import built
from gateway.config import check
from gateway.policies.origin import Origin

TLS_PORT = "kind: Port\nname: {name}\nport: 0\nhost: 127.0.0.1\ntls:\n  cert: {dir}/gw.pem\n  key: {dir}/gw.key\n"
WSS_API = ("kind: API\nname: Remote\npath: /remote\nports: [default]\nupstream:\n  endpoints:\n"
           "    - url: wss://127.0.0.1:9/remote\n")
APP = "kind: Application\nname: app\nidentifiers:\n  api_keys: [key-one-1]\napis: [Echo]\n"


@pytest.fixture
def ca():
    return trustme.CA()


def tree(root: Path, ca: trustme.CA, echo_url: str, *, second_port: bool = False, extra_api: bool = False) -> None:
    """A config with a TLS port (two with ``second_port``), an API to the echo backend, a wss upstream and an
    application; ``extra_api`` adds one more plain API."""
    root.mkdir(exist_ok=True)
    if not (root / "gw.pem").exists():
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(root / "gw.pem"))
        cert.private_key_pem.write_to_path(str(root / "gw.key"))
    documents = [PORT, TLS_PORT.format(name="secure", dir=root), api_yaml("Echo", "/echo", echo_url), WSS_API, APP]
    if second_port:
        documents.append(TLS_PORT.format(name="secure2", dir=root))
        documents[2] = api_yaml("Echo", "/echo", echo_url, ports="[default, secure2]")
    if extra_api:
        documents.append(api_yaml("More", "/more", echo_url))
    (root / "gateway.yaml").write_text("".join(d if d.startswith("---") else "---\n" + d for d in documents))


def counted(before: Counter[str]) -> dict[str, int]:
    """What was built since ``before`` was taken."""
    return {kind: n for kind, n in (built - before).items() if n}


async def test_run_serves_with_the_built_artefacts_and_a_reload_builds_each_once(tmp_path, ca):
    """Started with build()'s artefacts the gateway builds nothing more; a reload that adds a TLS port builds
    each TLS port's contexts, each API's upstream context, the application index and the disruptions exactly
    once (the check's build), and the new port serves wss:// with the context built there."""
    root = tmp_path / "config"
    async with echo_backend() as backend:
        tree(root, ca, backend.url("/echo/"))
        result = build([root])
        assert result.config is not None and result.artefacts is not None
        before = built.copy()
        async with running_gateway(result.config, paths=[root], artefacts=result.artefacts) as gw:
            assert counted(before) == {}
            tree(root, ca, backend.url("/echo/"), second_port=True)
            before = built.copy()
            outcome = await gw.reload("test")
            assert outcome.ok and not outcome.noop, outcome
            assert counted(before) == {"server_tls": 2, "upstream_tls": 1, "app_index": 1, "disruptions": 1,
                                       "routes": 2}
            assert gw.tls_contexts["secure2"] is not gw.tls_contexts["secure"]
            client = ssl.create_default_context()
            ca.configure_trust(client)
            async with connect(gw_url(gw, "/echo", port="secure2", scheme="wss"), ssl=client) as ws:
                await ws.send("over the new port")
                assert await ws.recv() == "over the new port"


async def test_a_config_applied_for_a_supervisor_is_built_once_in_the_worker(tmp_path, ca):
    """A worker gets a checked config without artefacts (SSL contexts do not cross processes): it builds them
    once to start and once per applied reload, never a second time in the same process."""
    root = tmp_path / "config"
    async with echo_backend() as backend:
        tree(root, ca, backend.url("/echo/"))
        config = check([root]).config
        assert config is not None
        before = built.copy()
        async with running_gateway(config, paths=[root], decides_reloads=False) as gw:
            assert counted(before) == {"server_tls": 1, "upstream_tls": 1, "app_index": 1, "routes": 2}
            tree(root, ca, backend.url("/echo/"), extra_api=True)
            newer = check([root]).config
            assert newer is not None
            before = built.copy()
            outcome = await gw.reload("supervisor", checked=newer, generation=7)
            assert outcome.ok and gw.table.generation == 7, outcome
            assert counted(before) == {"server_tls": 1, "upstream_tls": 1, "app_index": 1, "disruptions": 1,
                                       "routes": 3}


TOKENS_API = ("kind: API\nname: Tokens\npath: /tokens\nports: [default]\nupstream:\n  endpoints:\n"
              "    - url: ws://127.0.0.1:9/tokens\npolicies:\n  - type: identify\n    by: [jwt]\n    jwt:\n"
              "      issuer: https://issuer.test\n      audience: [wsgate]\n      algorithms: [HS256]\n"
              "      secret: {env: WSGATE_TEST_BUILD_SECRET}\n")
TOKENS_APP = "kind: Application\nname: dashboard\nidentifiers:\n  jwt_clients: [dash-client]\napis: [Tokens]\n"


async def test_build_makes_every_artefact_run_needs_once_and_run_serves_with_those_objects(tmp_path, ca, monkeypatch):
    """One build() makes each artefact once (TLS contexts, the compiled routes with their parsed endpoints and
    chain specs, the application index with its JWT keys, the origin patterns); the running gateway builds
    none of them again and its route table holds those very objects."""
    monkeypatch.setenv("WSGATE_TEST_BUILD_SECRET", "a-secret-long-enough-for-hs256-0123456789")
    root = tmp_path / "config"
    allowed = f"https://{tmp_path.name.lower().replace('_', '-')}.example"  # unique: patterns are memoized by text
    async with echo_backend() as backend:
        tree(root, ca, backend.url("/echo/"))
        origin = f"policies:\n  - type: origin\n    allow: ['{allowed}']\n"
        text = (root / "gateway.yaml").read_text()
        echo = api_yaml("Echo", "/echo", backend.url("/echo/"))
        (root / "gateway.yaml").write_text(text.replace(echo, api_yaml("Echo", "/echo", backend.url("/echo/"),
                                                                       extra=origin))
                                           + "---\n" + TOKENS_API + "---\n" + TOKENS_APP)
        before = built.copy()
        result = build([root])
        assert result.config is not None and result.artefacts is not None, result.diagnostics
        assert counted(before) == {"server_tls": 1, "upstream_tls": 1, "app_index": 1, "jwt_keys": 1, "routes": 3,
                                   "origin_patterns": 1}
        artefacts = result.artefacts
        before = built.copy()
        async with running_gateway(result.config, paths=[root], artefacts=artefacts) as gw:
            assert counted(before) == {}
            table = gw.table
            assert table.apps is artefacts.apps
            for name, compiled in artefacts.routes.items():
                route = table.apis[name]
                assert route.ssl_context is compiled.ssl_context
                assert [e.uri for e in route.endpoints] == [e.uri for e in compiled.endpoints]
                assert all(a.uri is b.uri for a, b in zip(route.endpoints, compiled.endpoints, strict=True))
                assert route.routing is compiled.routing and tuple(route.api.policies) == compiled.chain
            policy = next(p for p in table.apis["Echo"].chain if isinstance(p, Origin))
            assert policy.patterns == (origin_pattern(allowed),) and policy.patterns[0] is origin_pattern(allowed)
            async with connect(gw_url(gw, "/echo"), origin=allowed) as ws:
                await ws.send("through the built table")
                assert await ws.recv() == "through the built table"
            refused = await http_request(gw_url(gw, "/echo"), upgrade_request("/echo", extra="Origin: https://x.test\r\n"))
            assert refused.status == 403
