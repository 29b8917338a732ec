"""Autobahn|Testsuite runs against the gateway through ``kosoku`` (no Docker), and their summaries.

Two legs, each on the byte relay and the message relay:

- *fuzzingclient*: kosoku is the client; the gateway fronts the echo backend's
  plain echo context. A case fails if gateway + echo together misbehave.
- *fuzzingserver*: kosoku is the server the gateway's upstream points at; a
  websockets client (:func:`echo_client`) drives every case through the
  gateway, echoing what it receives, like Autobahn's own compliance clients.

Large and fragmented messages of group 9 need the gateway's and the echo
backend's size limits raised (:data:`MAX_MESSAGE`) and the websockets
library's fragment-count limit lifted (:func:`lift_fragment_limit`); both are
configuration, documented in docs/conformance.md.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets.asyncio.messages
from kosoku import FailureError, run_fuzzingclient, run_fuzzingserver
from kosoku._report import write_reports
from support import running_echo
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from echo.server import EchoService
from gateway.config import check
from gateway.config.models import EchoContext, EchoServer
from gateway.serving.runtime import Gateway

# Group 9 sends messages of up to 16 MiB; every hop must accept them.
MAX_MESSAGE = 32 * 2**20
# Group 9.3/9.4 send 4 MiB messages in 64-byte frames: 65,536 fragments.
MAX_FRAGMENTS = 1 << 20
AGENT = "wsgate"

# The groups issue 6 names; 12 and 13 only where permessage-deflate is negotiated.
GROUPS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
DEFLATE_GROUPS = ["12.*", "13.*"]
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")

PASSTHROUGH = '''\
"""A transform that changes nothing: it puts an API on the message relay."""


def passthrough(message):
    return message.payload
'''


def conformance_config(upstreams: dict[str, str]) -> str:
    """YAML for one loopback port and the conformance APIs, keyed by path -> upstream URL.

    A path starting with ``/fast`` has no message-stage policy (byte relay),
    ``/message`` a pass-through transform both ways (message relay) and
    ``/deflate`` permessage-deflate offered to clients (message relay).
    """
    docs = ["kind: Port\nname: default\nport: 0\nhost: 127.0.0.1\n"]
    for index, (path, url) in enumerate(upstreams.items()):
        text = (
            f"kind: API\nname: conformance-{index}\npath: {path}\nports: [default]\n"
            f"upstream:\n  endpoints:\n    - url: {url}\n"
            # No gateway pings: the cases count every frame the peer sends.
            f"keepalive:\n  interval: null\n"
            f"limits:\n  max_message_size: {MAX_MESSAGE}\n  max_fragments: {MAX_FRAGMENTS}\n"
        )
        if path.startswith("/message"):
            text += (
                "policies:\n"
                "  - {type: transform, stage: client, callable: 'conformance_passthrough:passthrough'}\n"
                "  - {type: transform, stage: server, callable: 'conformance_passthrough:passthrough'}\n"
            )
        elif path.startswith("/deflate"):
            text += "compression: true\n"
        docs.append(text)
    return "".join("---\n" + doc for doc in docs)


def write_conformance_tree(root: Path, upstreams: dict[str, str]) -> Path:
    """The config directory (YAML and the pass-through transform module) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text(conformance_config(upstreams))
    (root / "conformance_passthrough.py").write_text(PASSTHROUGH)
    return root


@contextmanager
def lift_fragment_limit() -> Iterator[None]:
    """Raise websockets' limit on frames per message (4096, env WEBSOCKETS_MAX_FRAGMENTS) for one run."""
    module = websockets.asyncio.messages
    saved = module.MAX_FRAGMENTS
    module.MAX_FRAGMENTS = MAX_FRAGMENTS
    try:
        yield
    finally:
        module.MAX_FRAGMENTS = saved


@asynccontextmanager
async def big_echo_backend() -> AsyncIterator[EchoService]:
    """The project's echo server on a free port, a plain echo context at ``/echo/``, group 9 sizes allowed."""
    model = EchoServer(
        kind="EchoServer",
        name="conformance-echo",
        port=1,
        contexts=[EchoContext(path="/echo/", mode="echo")],
        max_message_size=MAX_MESSAGE,
    )
    async with running_echo(model) as service:
        yield service


@dataclass
class Summary:
    """Verdicts of one run, as read back from kosoku's JSON report (``index.json``)."""

    name: str
    counts: Counter[str] = field(default_factory=Counter)
    not_ok: dict[str, dict[str, Any]] = field(default_factory=dict)  # case id -> index entry
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> dict[str, dict[str, Any]]:
        return {case: entry for case, entry in self.not_ok.items() if _verdict(entry) == "FAILED"}

    def row(self) -> str:
        cells = [self.name, str(self.total)] + [str(self.counts.get(v, 0)) for v in VERDICTS]
        return "| " + " | ".join(cells) + " |"


def _verdict(entry: dict[str, Any]) -> str:
    """One verdict per case: the behaviour, unless the closing handshake failed where the behaviour did not."""
    behavior = entry["behavior"]
    close = entry["behaviorClose"]
    if behavior in ("OK", "NON-STRICT", "INFORMATIONAL") and close not in ("OK", "INFORMATIONAL"):
        return "FAILED"
    return behavior


def read_report(outdir: Path, name: str) -> Summary:
    """Summarise kosoku's ``index.json`` in ``outdir``."""
    index = json.loads((outdir / "index.json").read_text())
    summary = Summary(name)
    for cases in index.values():
        for case, entry in cases.items():
            verdict = _verdict(entry)
            summary.counts[verdict] += 1
            if verdict != "OK":
                summary.not_ok[case] = entry
    return summary


def case_detail(outdir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The per-case report kosoku wrote next to ``index.json``."""
    return json.loads((outdir / entry["reportfile"]).read_text())


async def fuzzingclient(url: str, outdir: Path, cases: Sequence[str], exclude: Sequence[str] = ()) -> None:
    """kosoku as the client of ``url``; its reports (JSON only) go to ``outdir``."""
    try:
        results = await run_fuzzingclient(url, list(cases), list(exclude) or None)
    except FailureError as failure:  # the report says which; the test asserts on it
        results = failure.results
    write_reports(results, str(outdir), produce_html=False)


@asynccontextmanager
async def fuzzingserver(cases: Sequence[str], exclude: Sequence[str] = ()) -> AsyncIterator[Any]:
    """kosoku as a server on a free loopback port."""
    async with run_fuzzingserver(list(cases), list(exclude) or None, host="127.0.0.1", port=0) as server:
        yield server


async def server_results(server: Any, outdir: Path) -> None:
    """Wait for kosoku's fuzzingserver to finish and write its reports (JSON only) to ``outdir``."""
    try:
        results = await server.get_result()
    except FailureError as failure:
        results = failure.results
    write_reports(results, str(outdir), produce_html=False)


async def echo_client(control: str, cases_base: str, agent: str = AGENT) -> int:
    """Autobahn's echo client loop: ask ``control`` for the case count, run each case at ``cases_base``, report.

    ``control`` is kosoku's own address (getCaseCount, updateReports);
    ``cases_base`` is where ``runCase`` is reached (the gateway's API).
    Returns the number of cases driven.
    """
    async with connect(f"{control}/getCaseCount") as ws:
        count = int(await ws.recv())
    for case in range(1, count + 1):
        try:
            async with connect(f"{cases_base}?case={case}&agent={agent}", max_size=MAX_MESSAGE,
                               max_queue=None, compression=None) as ws:
                async for message in ws:
                    await ws.send(message)
        except ConnectionClosed:
            pass  # the case failed the connection on purpose
    async with connect(f"{control}/updateReports?agent={agent}") as ws:
        with suppress(ConnectionClosed):
            await ws.recv()
    return count


@asynccontextmanager
async def conformance_gateway(config_root: Path, upstreams: dict[str, str]) -> AsyncIterator[str]:
    """A started gateway serving the conformance APIs; yields its ws:// base URL."""
    result = check([write_conformance_tree(config_root, upstreams)])
    assert result.config is not None, f"conformance config does not check: {result.diagnostics}"
    gateway = Gateway(result.config, admin=False, echo=False)
    await gateway.start()
    try:
        host, port = gateway.addresses["default"]
        yield f"ws://{host}:{port}"
    finally:
        await gateway.stop()


async def run_leg(leg: str, path: str, workdir: Path, cases: Sequence[str]) -> tuple[Summary, Path]:
    """One Autobahn run through the gateway API at ``path``; its summary and report directory.

    ``leg`` is ``client`` (kosoku fuzzingclient -> gateway -> echo backend) or
    ``server`` (websockets echo client -> gateway -> kosoku fuzzingserver).
    """
    outdir = workdir / "reports"
    started = time.monotonic()
    with lift_fragment_limit():
        if leg == "client":
            async with big_echo_backend() as echo:
                async with conformance_gateway(workdir / "config", {path: echo.url("/echo/")}) as base:
                    await fuzzingclient(base + path, outdir, cases)
        else:
            async with fuzzingserver(cases) as server:
                control = f"ws://127.0.0.1:{server.port}"
                async with conformance_gateway(workdir / "config", {path: control + "/runCase"}) as base:
                    driven = await echo_client(control, base + path)
                await server_results(server, outdir)
            assert driven > 0, "kosoku offered no case"
    summary = read_report(outdir, f"{leg} {path}")
    summary.seconds = time.monotonic() - started
    return summary, outdir


async def _main(full: bool, workdir: Path) -> None:
    """Run every leg and print the docs' summary table and the non-OK cases."""
    deflate = DEFLATE_GROUPS if full else [f"{g}.{s}.{n}" for g, subs in (("12", 5), ("13", 7))
                                          for s in range(1, subs + 1) for n in range(1, 5)]
    legs = [("client", "/fast", GROUPS), ("client", "/message", GROUPS), ("client", "/deflate", GROUPS + deflate),
            ("server", "/fast", GROUPS), ("server", "/message", GROUPS)]
    rows, notes = [], []
    for leg, path, cases in legs:
        summary, reports = await run_leg(leg, path, workdir / f"{leg}{path.replace('/', '-')}", cases)
        rows.append(summary.row() + f" {summary.seconds:.0f} s |")
        for case, entry in sorted(summary.not_ok.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]):
            detail = case_detail(reports, entry)
            notes.append(f"{summary.name} {case} {entry['behavior']}/{entry['behaviorClose']} "
                         f"close={entry['remoteCloseCode']} {detail['remoteCloseReason']!r}")
    print("| leg / API | cases | " + " | ".join(VERDICTS) + " | time |")
    print("\n".join(rows))
    print("\n".join(notes))


if __name__ == "__main__":  # python tests/autobahn_support.py [--full]  (regenerates docs/conformance.md figures)
    import asyncio
    import sys
    import tempfile

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_main("--full" in sys.argv, Path(tmp)))
