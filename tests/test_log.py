"""Logging setup: JSON lines on stderr, and credentials redacted whatever a module logs."""

from __future__ import annotations

import json

import structlog

from gateway.log import REDACTED, configure_logging, redact_credentials


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
