"""`validate --probe` and `plan --probe`: a real handshake to every upstream URL, reported at the URL's line."""

from __future__ import annotations

import asyncio
import json

from support import PORT, api_yaml, echo_backend, run, write_config

from gateway import cli


async def dead_port() -> int:
    """A port where a server listened a moment ago: connecting to it is refused."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_validate_probe_reports_wrong_path_wrong_port_and_good_endpoint(tmp_path, capsys):
    """A wrong path is WSG150 '404 Not Found at /echo', a dead port 'connection refused', each at its URL's line;
    the good endpoint is listed with its 101; without --probe the same tree is valid."""

    async def scenario():
        async with echo_backend() as backend:
            port = await dead_port()
            write_config(
                tmp_path, PORT,
                api_yaml("Good", "/good", backend.url("/echo/")),
                api_yaml("WrongPath", "/wrong-path", backend.url("/echo")),
                api_yaml("WrongPort", "/wrong-port", f"ws://127.0.0.1:{port}/echo/"),
            )
            root = str(tmp_path / "config")
            assert await asyncio.to_thread(cli.main, ["validate", root]) == 0
            capsys.readouterr()
            code = await asyncio.to_thread(cli.main, ["validate", root, "--probe", "--probe-timeout", "5"])
            return code, port

    code, port = run(scenario())
    out = capsys.readouterr().out
    text = (tmp_path / "config" / "gateway.yaml").read_text()
    assert code == 1
    path_line = next(i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith("/echo"))
    port_line = line_of(text, f":{port}/")
    good_line = next(i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith("/echo/")
                     and f":{port}/" not in line)
    wrong_path = "upstream probe of API 'WrongPath': 404 Not Found at /echo"
    assert f"gateway.yaml:{path_line}:12: error WSG150: {wrong_path}" in out
    assert f"gateway.yaml:{port_line}:12: error WSG150: upstream probe of API 'WrongPort': connection refused" in out
    assert f"gateway.yaml:{good_line}:12: probe " in out and "101 Switching Protocols" in out
    assert "trailing '/'" in out  # the hint for a 404
    assert "invalid: 2 errors" in out


def test_validate_probe_json_and_plan_probe(tmp_path, capsys):
    """--format json carries the probe errors like any diagnostic; plan --probe refuses to plan past a failed probe
    and plans as usual when every upstream answers 101."""

    async def scenario():
        async with echo_backend() as backend:
            write_config(tmp_path, PORT, api_yaml("WrongPath", "/w", backend.url("/nothing-here")))
            root = str(tmp_path / "config")
            code = await asyncio.to_thread(cli.main, ["validate", root, "--probe", "--format", "json"])
            out = capsys.readouterr().out  # the echo backend's log lines share stdout in tests
            report, _ = json.JSONDecoder().raw_decode(out[out.index('{\n  "valid"'):])
            planned_bad = await asyncio.to_thread(cli.main, ["plan", root, "--from", root, "--probe"])
            bad_err = capsys.readouterr().err
            write_config(tmp_path, PORT, api_yaml("Good", "/g", backend.url("/echo/")))
            planned_good = await asyncio.to_thread(cli.main, ["plan", root, "--from", root, "--probe"])
            good = capsys.readouterr()
            return code, report, planned_bad, bad_err, planned_good, good

    code, report, planned_bad, bad_err, planned_good, good = run(scenario())
    assert code == 1
    assert report["valid"] is False
    assert [d["code"] for d in report["diagnostics"] if d["severity"] == "error"] == ["WSG150"]
    assert planned_bad == 1 and "404 Not Found at /nothing-here" in bad_err and "nothing planned" in bad_err
    assert planned_good == 0 and "No changes." in good.out and "101 Switching Protocols" in good.err
