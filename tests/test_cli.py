"""The wsgate command line: validate, plan and schemas through main(), their output and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import structlog
from config_helpers import API, APP, PORT, write

from gateway.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def tree(root: Path, *, port: str = PORT, api: str = API, app: str = APP) -> Path:
    write(root, "ports.yaml", port)
    write(root, "apis/echo.yaml", api)
    write(root, "apps/demo.yaml", app)
    return root


def test_validate_examples_passes_with_warnings(capsys, monkeypatch):
    """`wsgate validate examples/` exits 0 and shows the three expected warnings (two unset variables)."""
    monkeypatch.delenv("DEMO_APP_KEY", raising=False)
    monkeypatch.delenv("TRACKING_PUSH_KEY", raising=False)
    assert main(["validate", str(EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert "warning WSG200" in out and "warning WSG203" in out and "TRACKING_PUSH_KEY" in out
    assert out.splitlines()[-1] == "valid: 0 errors, 3 warnings in 8 files"


def test_validate_strict_fails_on_warnings(monkeypatch):
    """`--strict` turns warnings into a failing exit."""
    monkeypatch.delenv("DEMO_APP_KEY", raising=False)
    monkeypatch.delenv("TRACKING_PUSH_KEY", raising=False)
    assert main(["validate", "--strict", str(EXAMPLES)]) == 1


def test_validate_invalid_text(tmp_path, capsys):
    """An invalid tree exits 1 and prints file:line:col, the line, a caret and the hint."""
    tree(tmp_path, port=PORT + "hots: x\n")
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tmp_path / 'ports.yaml'}:4:1: error WSG100: unknown field 'hots'"
    assert out[1:4] == [" 4 | hots: x", "   | ^", "  hint: did you mean 'host'?"]
    assert out[-1] == "invalid: 1 error, 0 warnings in 3 files"


def test_validate_json_and_github(tmp_path, capsys):
    """JSON and GitHub formats carry the same diagnostic."""
    tree(tmp_path, port=PORT + "hots: x\n")
    assert main(["validate", "--format", "json", str(tmp_path)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is False
    assert [(d["code"], d["line"], d["col"]) for d in data["diagnostics"]] == [("WSG100", 4, 1)]
    assert main(["validate", "--format", "github", str(tmp_path)]) == 1
    assert capsys.readouterr().out.startswith(f"::error file={tmp_path / 'ports.yaml'},line=4,col=1,title=WSG100::")


def test_validate_several_paths(tmp_path, capsys):
    """Several paths form one config: a reference across them resolves."""
    write(tmp_path / "a", "ports.yaml", PORT)
    write(tmp_path / "b", "apis/echo.yaml", API)
    assert main(["validate", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert main(["validate", str(tmp_path / "b")]) == 1
    assert "WSG112" in capsys.readouterr().out


def test_usage_errors_exit_1(capsys):
    """Unknown options and formats are errors (exit 1, as Terraform's -detailed-exitcode), reported on stderr."""
    assert main(["validate", "--format", "xml"]) == 1
    assert main(["frobnicate"]) == 1
    assert main([]) == 1
    assert main(["plan", "--format", "json"]) == 1  # --from missing
    assert "usage:" in capsys.readouterr().err


def test_plan_between_directories(tmp_path, capsys):
    """`plan --from DIR` prints the plan and exits 2 on changes, 0 on none."""
    old = tree(tmp_path / "old")
    new = tree(tmp_path / "new", port=PORT.replace("8082", "8083"))
    assert main(["plan", str(new), "--from", str(old)]) == 2
    out = capsys.readouterr().out
    assert "~ port : 8082 → 8083  !" in out
    assert out.splitlines()[-1] == "Plan: 0 to add, 1 to change, 0 to destroy."
    assert main(["plan", str(old), "--from", str(old)]) == 0
    assert capsys.readouterr().out == "No changes. The config matches.\n"
    assert main(["plan", str(new), "--from", str(old), "--format", "json"]) == 2
    assert json.loads(capsys.readouterr().out)["summary"]["change"] == 1


def test_plan_github_annotates_the_lines_that_disrupt(tmp_path, capsys):
    """`plan --format github` prints the plan, then a warning annotation at each disruptive change's line."""
    old = tree(tmp_path / "old")
    new = tree(tmp_path / "new", port=PORT.replace("8082", "8083"), app=APP.replace("apis: [EchoWS]", "apis: []"))
    assert main(["plan", str(new), "--from", str(old), "--format", "github"]) == 2
    out = capsys.readouterr().out
    assert "Plan: 0 to add, 2 to change, 0 to destroy." in out
    annotations = [line for line in out.splitlines() if line.startswith("::warning")]
    assert annotations == [
        f"::warning file={new / 'ports.yaml'},line=3,col=7,title=Port default%3A disrupts live connections::"
        "port number changed (drained, then closed with 1001)",
        f"::warning file={new / 'apps/demo.yaml'},line=6,col=7,title=Application demo-app%3A disrupts live "
        "connections::application deregistered from API 'EchoWS' (closed at once with 1008)",
    ]


def test_plan_refuses_an_invalid_desired_config(tmp_path, capsys):
    """An invalid desired config exits 1 with validate's diagnostics."""
    old = tree(tmp_path / "old")
    new = tree(tmp_path / "new", port=PORT + "hots: x\n")
    assert main(["plan", str(new), "--from", str(old)]) == 1
    err = capsys.readouterr().err
    assert f"{new / 'ports.yaml'}:4:1: error WSG100: unknown field 'hots'" in err


def test_plan_unknown_source(tmp_path, capsys):
    """A --from that is neither a directory nor a revision exits 1."""
    new = tree(tmp_path / "new")
    assert main(["plan", str(new), "--from", "no-such-thing"]) == 1
    assert "not inside a git repository" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_plan_from_git_revision(tmp_path, capsys):
    """`plan --from HEAD~1` diffs against the config as committed one revision earlier."""
    repo = tmp_path / "repo"
    config = tree(repo / "deploy")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=repo, check=True, capture_output=True,
        )

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    write(config, "apis/second.yaml", API.replace("EchoWS", "Second").replace("/1.0", "/2.0"))
    git("add", ".")
    git("commit", "-q", "-m", "two")
    assert main(["plan", str(config), "--from", "HEAD"]) == 0
    capsys.readouterr()
    assert main(["plan", str(config), "--from", "HEAD~1"]) == 2
    out = capsys.readouterr().out
    assert '+ API "Second"' in out
    assert out.splitlines()[-1] == "Plan: 1 to add, 0 to change, 0 to destroy."
    assert main(["plan", str(config), "--from", "not-a-rev"]) == 1
    assert "neither a directory nor a git revision" in capsys.readouterr().err


def test_run_refuses_an_invalid_config(tmp_path, capsys):
    """`wsgate run` checks exactly as validate does and exits 1 on errors, before starting anything."""
    tree(tmp_path, port=PORT + "hots: x\n")
    assert main(["run", str(tmp_path)]) == 1
    assert "error WSG100: unknown field 'hots'" in capsys.readouterr().err
    assert main(["echo", str(tmp_path)]) == 1


def test_echo_without_an_echo_server_exits_1_with_one_line(tmp_path, capsys):
    """`wsgate echo` on a valid config that declares no echo server exits 1 with one `no_echo_server` line: the
    CLI picks the status (the echo server's loop returns none)."""
    tree(tmp_path)
    try:
        assert main(["echo", str(tmp_path), "--log-format", "json"]) == 1
    finally:
        structlog.reset_defaults()  # main configured logging onto capsys's stderr
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines if line.get("level") == "error"] == ["no_echo_server"]


def test_run_admin_must_be_host_port(tmp_path):
    """A malformed --admin is a usage error (exit 1)."""
    assert main(["run", str(tmp_path), "--admin", "nonsense"]) == 1
