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
from support import PORT, api_yaml, echo_backend, gw_url, running_gateway
from websockets.asyncio.client import connect

from gateway.build.pipeline import build
from gateway.common.build_counts import built
from gateway.config import check

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
            assert counted(before) == {"server_tls": 2, "upstream_tls": 1, "app_index": 1, "disruptions": 1}
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
            assert counted(before) == {"server_tls": 1, "upstream_tls": 1, "app_index": 1}
            tree(root, ca, backend.url("/echo/"), extra_api=True)
            newer = check([root]).config
            assert newer is not None
            before = built.copy()
            outcome = await gw.reload("supervisor", checked=newer, generation=7)
            assert outcome.ok and gw.table.generation == 7, outcome
            assert counted(before) == {"server_tls": 1, "upstream_tls": 1, "app_index": 1, "disruptions": 1}
