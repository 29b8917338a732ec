"""Files outside the config tree and special files are refused unread, and nothing of them reaches an output
(issue 21, defect 1): validate (text, JSON, GitHub), plan, run, a live reload and admin `/reload`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from gateway_process import gateway_process
from support import PORT, TIMEOUT, api_yaml

from gateway.config import check
from gateway.config.diagnostics import CUT_MARKER, QUOTE_WIDTH

# In the file a link points at, and in the environment of every subprocess (for /proc/self/environ).
MARKER = f"leak-marker-{uuid.uuid4().hex}"
GOOD = PORT + api_yaml("Echo", "/echo", "ws://127.0.0.1:9/echo/")
ENV = {**os.environ, "WSGATE_TEST_MARKER": MARKER, "PYTHONUNBUFFERED": "1"}


def outside_file(tmp_path: Path) -> Path:
    """A YAML file outside the tree whose first line and values hold the marker."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    secret = outside / "secret.yaml"
    secret.write_text(f"{MARKER}: [\nkind: API\nname: {MARKER}\n")
    return secret


def add_hostile_entries(root: Path, tmp_path: Path) -> None:
    """Links out of the tree (to a file with the marker, to /proc/self/environ), a FIFO, a directory *.yaml."""
    (root / "link.yaml").symlink_to(outside_file(tmp_path))
    (root / "environ.yaml").symlink_to("/proc/self/environ")
    os.mkfifo(root / "fifo.yaml")
    (root / "dir.yaml").mkdir()


def good_tree(tmp_path: Path, name: str = "config") -> Path:
    root = tmp_path / name
    root.mkdir()
    (root / "gateway.yaml").write_text(GOOD)
    return root


def hostile_tree(tmp_path: Path) -> Path:
    root = good_tree(tmp_path)
    add_hostile_entries(root, tmp_path)
    return root


def wsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=ENV,
                          timeout=TIMEOUT * 3, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("fmt", ["text", "json", "github"])
def test_validate_refuses_links_out_and_special_files_and_quotes_nothing_of_them(tmp_path, fmt):
    """validate in every format names each refused file with its code and never prints the marker."""
    root = hostile_tree(tmp_path)
    done = wsgate("validate", str(root), "--format", fmt)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert MARKER not in output
    if fmt == "json":
        found = {(Path(d["file"]).name, d["code"]) for d in json.loads(done.stdout)["diagnostics"]}
    else:
        found = {(name, code) for line in output.splitlines() for name in ("link.yaml", "environ.yaml", "fifo.yaml")
                 for code in ("WSG011", "WSG012") if name in line and code in line}
    assert {("link.yaml", "WSG011"), ("environ.yaml", "WSG012"), ("fifo.yaml", "WSG012")} <= found, output
    assert "dir.yaml" not in output  # a directory named *.yaml is a directory: walked, not refused


def test_validate_json_diagnostics_are_located_and_have_a_hint(tmp_path):
    """The refusals are errors at file:1:1 with a hint and no quoted line."""
    root = hostile_tree(tmp_path)
    body = json.loads(wsgate("validate", str(root), "--format", "json").stdout)
    refused = {Path(d["file"]).name: d for d in body["diagnostics"] if d["code"] in ("WSG011", "WSG012")}
    assert set(refused) == {"link.yaml", "environ.yaml", "fifo.yaml"}
    for d in refused.values():
        assert (d["severity"], d["line"], d["col"], d["source_line"]) == ("error", 1, 1, None)
        assert d["hint"]


def test_plan_never_prints_a_file_outside_the_tree(tmp_path):
    """plan, the hostile tree on either side, refuses it without the marker in its output."""
    hostile = hostile_tree(tmp_path)
    good = good_tree(tmp_path, "good")
    for args in ((str(hostile), "--from", str(good)), (str(good), "--from", str(hostile))):
        for fmt in ("text", "json", "github"):
            done = wsgate("plan", *args, "--format", fmt)
            assert done.returncode == 1, done.stdout + done.stderr
            assert "WSG011" in done.stdout + done.stderr
            assert MARKER not in done.stdout + done.stderr


def test_run_refuses_the_tree_without_printing_a_file_outside_it(tmp_path):
    """run with the hostile tree exits 1 before listening and prints nothing of the linked files."""
    done = wsgate("run", str(hostile_tree(tmp_path)), "--log-format", "json")
    assert done.returncode == 1
    assert "WSG012" in done.stdout + done.stderr
    assert MARKER not in done.stdout + done.stderr


def test_named_files_linking_out_or_special_are_refused_where_they_are_named(tmp_path):
    """A certificate linking out of the tree, a key that is /proc/self/environ, a token file that is a FIFO and a
    JWKS file linking out are refused at the field that names them, and the JWKS is not parsed."""
    root = tmp_path / "config"
    root.mkdir()
    secret = outside_file(tmp_path)
    (root / "cert.pem").symlink_to(secret)
    (root / "jwks.json").symlink_to(secret)
    os.mkfifo(root / "token")
    port = PORT + "tls:\n  cert: cert.pem\n  key: /proc/self/environ\n"
    gateway = "---\nkind: Gateway\nname: g\nadmin:\n  token_file: token\n"
    api = api_yaml("Echo", "/echo", "ws://127.0.0.1:9/echo/", extra="""
        policies:
          - type: identify
            by: [jwt]
            jwt: {issuer: 'https://issuer.example', audience: [a], algorithms: [RS256], jwks_file: jwks.json}
        """)
    (root / "gateway.yaml").write_text(port + gateway + api)
    result = check([root], env={})
    found = {(d.code, d.location.line) for d in result.diagnostics if d.code in ("WSG011", "WSG012")}
    lines = (root / "gateway.yaml").read_text().splitlines()

    def line_of(text: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if text in line)

    assert found == {("WSG011", line_of("cert: cert.pem")), ("WSG012", line_of("key: /proc")),
                     ("WSG012", line_of("token_file")), ("WSG011", line_of("jwks_file"))}
    assert not any(d.code == "WSG129" for d in result.diagnostics)  # the JWKS behind the link was never read
    assert MARKER not in json.dumps([d.to_dict() for d in result.diagnostics])


def test_named_files_written_outside_the_tree_are_read_links_inside_it_too(tmp_path):
    """A path written outside the tree (a mounted secret) and a link that stays inside the tree are accepted."""
    root = tmp_path / "config"
    (root / "keys").mkdir(parents=True)
    mounted = tmp_path / "mounted-token"
    mounted.write_text("t0ken\n")
    (root / "keys" / "real-token").write_text("t0ken\n")
    (root / "token").symlink_to("keys/real-token")
    for token_file in (str(mounted), "token"):
        (root / "gateway.yaml").write_text(f"{GOOD}---\nkind: Gateway\nname: g\nadmin:\n  token_file: {token_file}\n")
        result = check([root])
        assert result.ok, result.diagnostics


def test_a_line_that_is_not_text_is_never_quoted_and_a_long_line_is_cut(tmp_path):
    """A file that is not UTF-8 is quoted nowhere, a line with a NUL is not quoted, a 200 KB line is cut."""
    root = tmp_path / "config"
    root.mkdir()
    (root / "binary.yaml").write_bytes(b"kind: Port\nname: \xff" + MARKER.encode() + b"\n")
    (root / "nul.yaml").write_text(f"kind: Port\x00{MARKER}\n")
    (root / "long.yaml").write_text("kind: Port\nname: p\nport: " + "9" * 200_000 + "\n")
    result = check([root])
    by_file = {Path(d.location.file).name: d for d in result.diagnostics if d.location is not None}
    assert by_file["binary.yaml"].code == "WSG003" and by_file["binary.yaml"].source_line is None
    assert by_file["nul.yaml"].source_line is None
    long_line = by_file["long.yaml"].source_line
    assert long_line is not None and long_line.endswith(CUT_MARKER)
    assert len(long_line) == QUOTE_WIDTH + len(CUT_MARKER)
    assert MARKER not in json.dumps([d.to_dict() for d in result.diagnostics])


def _admin(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST"
                                     else None)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_live_reload_and_admin_reload_never_show_a_file_outside_the_tree(tmp_path):
    """A running gateway whose tree gains links out (one to its own /proc/self/environ) fails the reload on
    the watcher and on POST /reload, keeps serving, and neither its log nor GET /reload nor the dashboard's
    data shows the marker."""
    root = good_tree(tmp_path)
    with gateway_process(root, tmp_path / "gateway.log", env={"WSGATE_TEST_MARKER": MARKER}) as gateway:
        admin = gateway.ports["admin"]
        gateway.wait_for(lambda: any(r.get("event") == "watching" for r in gateway.records()))
        add_hostile_entries(root, tmp_path)
        gateway.wait_for(lambda: any(r.get("event") == "reload_failed" and r.get("trigger") == "files"
                                     for r in gateway.records()))
        status, posted = _admin(admin, "/reload", "POST")
        assert status == 422 and "WSG012" in posted
        status, history = _admin(admin, "/reload")
        assert status == 200 and "WSG011" in history
        assert _admin(admin, "/config")[0] == 200
        answers = posted + history + _admin(admin, "/config")[1]
        assert MARKER not in answers
        assert MARKER not in gateway.stderr()
