"""Logging setup: JSON lines on stderr, and credentials redacted whatever a module logs."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import structlog
import structlog.testing

from gateway.common.log import REDACTED, configure_logging, redact_credentials


def test_redaction_of_credential_keys_nested_and_in_header_lists():
    """Values of api_key/authorization/token-like keys are replaced, also inside mappings and header lists."""
    event = {
        "event": "upgrade",
        "api_key": "k1",
        "headers": [("X-Gateway-APIKey", "k2"), ("Host", "example")],
        "query": {"x-Gateway-APIKey": "k3", "user": "bob"},
        "Authorization": "Bearer k4",
        "password": "k5",
        "api": "EchoWS",
    }
    out = redact_credentials(None, "info", dict(event))
    assert out["api_key"] == out["Authorization"] == out["password"] == REDACTED
    assert out["headers"] == [("X-Gateway-APIKey", REDACTED), ("Host", "example")]
    assert out["query"] == {"x-Gateway-APIKey": REDACTED, "user": "bob"}
    assert out["api"] == "EchoWS"


def test_json_format_writes_redacted_lines_to_stderr(capsys):
    """`configure_logging("json")` writes one JSON object per event to stderr, without the key."""
    configure_logging("json")
    try:
        structlog.get_logger("wsgate.test").info("hello", api_key="secret-key", api="EchoWS")
        captured = capsys.readouterr()
        assert captured.out == ""
        record = json.loads(captured.err.strip().splitlines()[-1])
        assert record["event"] == "hello" and record["api"] == "EchoWS" and record["level"] == "info"
        assert "secret-key" not in captured.err
    finally:
        structlog.reset_defaults()


LOG_LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "msg"}
SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
SOURCE_ROOTS = [Path(__file__).resolve().parent.parent / name for name in ("gateway", "echo")]


def log_events() -> list[tuple[str, int, str]]:
    """(file, line, event) of every log call with a literal event name in the package code."""
    found = []
    for root in SOURCE_ROOTS:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in LOG_LEVELS and node.args):
                    continue
                receiver = node.func.value
                name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", "")
                first = node.args[0]
                if "log" in name.lower() and isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.append((path.name, node.lineno, first.value))
    return found


def test_every_log_event_name_is_snake_case():
    """Log events are names to filter on (reload_failed), not sentences: every literal event is snake_case."""
    events = log_events()
    assert len(events) > 50  # the scan sees the code's log calls
    assert [e for e in events if not SNAKE_CASE.fullmatch(e[2])] == []


def test_reload_failure_log_lines_carry_the_hints_get_reload_shows(tmp_path):
    """Each error of a failed reload is logged with the hint that GET /reload shows for it."""
    from support import PORT, api_yaml, run, running_gateway, write_config

    async def scenario():
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", "ws://127.0.0.1:9/echo/"))
        async with running_gateway(config, paths=[tmp_path / "config"]) as gw:
            (tmp_path / "config" / "more.yaml").write_text(api_yaml("Chat", "/chat", "ws://x/", ports="[defualt]"))
            with structlog.testing.capture_logs() as logs:
                outcome = await gw.reload("test")
            return outcome, logs

    outcome, logs = run(scenario())
    assert not outcome.ok
    shown = {(d.code, d.hint or None) for d in outcome.diagnostics if d.severity == "error"}
    logged = {(e["code"], e["hint"]) for e in logs if e["event"] == "reload_failed" and "code" in e}
    assert shown and logged == shown
    assert any("did you mean 'default'" in (hint or "") for _, hint in logged)
    assert all(e["log_level"] == "error" for e in logs if e["event"] == "reload_failed")
