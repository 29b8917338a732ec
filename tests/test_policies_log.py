"""The log-invocation policy: transaction records written to a JSON-lines file."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import threading
from pathlib import Path

import pytest
import structlog.testing
from policy_helpers import app_index, application, connection, loaded, policy_build, upgrade_request

from gateway.build.apps import AppIndex
from gateway.config.models import API, IdentifyPolicy, LogInvocationPolicy
from gateway.policies.base import ApplicationRef, Message
from gateway.policies.identify import Identify
from gateway.policies.log_invocation import LogInvocation
from gateway.policies.state import PolicyState

ECHO = API.model_validate({
    "kind": "API", "name": "Echo", "version": "2.1", "path": "/echo", "ports": ["public"],
    "upstream": {"endpoints": [{"url": "ws://127.0.0.1:9/echo"}]},
})


@pytest.fixture
def state():
    state = PolicyState()
    yield state
    state.close()


def log_policy(state: PolicyState, tmp_path: Path, **spec) -> LogInvocation:
    spec.setdefault("file", "transactions.jsonl")
    return LogInvocation(LogInvocationPolicy(type="log-invocation", **spec),
                         policy_build(loaded(ECHO, tmp_path), state=state, base_dir=tmp_path))


def records(policy: LogInvocation) -> list[dict]:
    assert policy.writer.flush()
    return [json.loads(line) for line in policy.writer.path.read_text().splitlines()]


def test_outcome_message_and_close_records(state, tmp_path):
    """An accepted connection writes an upgrade, a message and a close record to the file (relative to the config)."""
    policy = log_policy(state, tmp_path, store_client_messages=True)
    assert policy.writer.path == (tmp_path / "transactions.jsonl").resolve()
    conn = connection(query="room=1")
    conn.application = ApplicationRef("alpha", "api_key")
    policy.on_outcome(conn, 101, None, None)
    message = Message("client", True, "héllo")
    assert policy.on_message(message, conn) is message
    conn.counters.messages_in = 1
    policy.on_close(conn, 1000, "bye")
    upgrade, msg, close = records(policy)
    assert upgrade["record"] == "upgrade" and upgrade["status"] == 101 and upgrade["accepted"] is True
    assert (upgrade["api"], upgrade["version"], upgrade["application"]) == ("Echo", "2.1", "alpha")
    assert upgrade["query"] == "room=1" and upgrade["connection"] == conn.id
    assert msg["record"] == "message" and msg["direction"] == "client" and msg["type"] == "text"
    assert (msg["payload"], msg["encoding"], msg["size"]) == ("héllo", "text", len("héllo".encode()))
    assert close["record"] == "close" and close["code"] == 1000 and close["reason"] == "bye"
    assert close["messages_in"] == 1


def test_message_stages_follow_the_store_flags(state, tmp_path):
    """Only the directions whose messages are stored are message stages."""
    assert log_policy(state, tmp_path).message_stages == frozenset()
    both = log_policy(state, tmp_path, store_client_messages=True, store_server_messages=True)
    assert both.message_stages == frozenset({"client", "server"})


def test_refusal_record(state, tmp_path):
    """A refused upgrade is recorded with its status, error and reason."""
    policy = log_policy(state, tmp_path)
    policy.on_outcome(connection(), 401, "unauthorized", "missing API key")
    (record,) = records(policy)
    assert (record["status"], record["accepted"], record["error"]) == (401, False, "unauthorized")


def test_binary_payload_is_base64(state, tmp_path):
    """A binary payload is stored base64-encoded."""
    policy = log_policy(state, tmp_path, store_server_messages=True)
    policy.on_message(Message("server", False, b"\x00\xff"), connection())
    (record,) = records(policy)
    assert record["encoding"] == "base64" and base64.b64decode(record["payload"]) == b"\x00\xff"


def test_compressed_payload_round_trips(state, tmp_path):
    """With `compress`, the payload is gzip+base64 and decodes back to the original bytes."""
    policy = log_policy(state, tmp_path, store_client_messages=True, compress=True)
    policy.on_message(Message("client", True, "compress me " * 10), connection())
    (record,) = records(policy)
    assert record["encoding"] == "gzip+base64"
    assert gzip.decompress(base64.b64decode(record["payload"])).decode() == "compress me " * 10


def test_truncation(state, tmp_path):
    """Payloads longer than `max_payload_bytes` are cut and marked truncated; the size is the full size."""
    policy = log_policy(state, tmp_path, store_client_messages=True, max_payload_bytes=4)
    policy.on_message(Message("client", True, "abcdefgh"), connection())
    policy.on_message(Message("client", False, b"abcdefgh"), connection())
    zipped = log_policy(state, tmp_path, store_client_messages=True, max_payload_bytes=4, compress=True)
    zipped.on_message(Message("client", True, "abcdefgh"), connection())
    text, binary, compressed = records(policy)
    assert (text["payload"], text["encoding"], text["size"]) == ("abcd", "text+truncated", 8)
    assert (base64.b64decode(binary["payload"]), binary["encoding"]) == (b"abcd", "base64+truncated")
    assert compressed["encoding"] == "gzip+base64+truncated"
    assert gzip.decompress(base64.b64decode(compressed["payload"])) == b"abcd"


def test_on_failure_skips_successes(state, tmp_path):
    """`frequency: on-failure` skips 101 outcomes, messages and 1000/1001 closes, and keeps the rest."""
    policy = log_policy(state, tmp_path, store_client_messages=True, frequency="on-failure")
    conn = connection()
    policy.on_outcome(conn, 101, None, None)
    policy.on_message(Message("client", True, "x"), conn)
    policy.on_close(conn, 1000, "")
    policy.on_close(conn, 1001, "going away")
    policy.on_outcome(conn, 503, "throttled", "limit")
    policy.on_close(conn, 1011, "transform failed")
    policy.on_close(conn, None, "")  # no close frame at all: a failure
    kept = records(policy)
    assert [(r["record"], r.get("status"), r.get("code")) for r in kept] == [
        ("upgrade", 503, None), ("close", None, 1011), ("close", None, None)]


def test_rotation_creates_backup(state, tmp_path):
    """With a tiny `max_file_bytes` the file rotates to `.1` and a fresh file holds the newest record."""
    policy = log_policy(state, tmp_path, max_file_bytes=1, backups=2)
    for status in (401, 403, 503):
        policy.on_outcome(connection(), status, "e", "r")
    assert policy.writer.flush()
    path = policy.writer.path
    backup1 = path.with_name(path.name + ".1")
    backup2 = path.with_name(path.name + ".2")
    assert json.loads(backup1.read_text())["status"] == 503
    assert json.loads(backup2.read_text())["status"] == 403
    assert not path.with_name(path.name + ".3").exists()


def test_writers_are_shared_per_file(state, tmp_path):
    """Two policies logging to the same file share one writer."""
    assert log_policy(state, tmp_path).writer is log_policy(state, tmp_path).writer


def test_presented_key_never_in_the_file(state, tmp_path):
    """After identify saw a key in the query and header, no record in the file contains the key."""
    key = "very-secret-key-0042"
    query = f"x-Gateway-APIKey={key}&room=7"
    apps: AppIndex = app_index(application("alpha", api_keys=[key]))
    identify = Identify(IdentifyPolicy(type="identify"), policy_build("Echo", apps, state))
    policy = log_policy(state, tmp_path, store_client_messages=True)
    accepted = connection(query=query)
    assert identify.on_upgrade(upgrade_request(query=query), accepted) is None
    policy.on_outcome(accepted, 101, None, None)
    policy.on_message(Message("client", True, "hi"), accepted)
    policy.on_close(accepted, 1000, "")
    refused = connection(query=query)
    rejection = identify.on_upgrade(upgrade_request(query=query, headers=[("x-Gateway-APIKey", key)]), refused)
    assert rejection is not None
    policy.on_outcome(refused, rejection.status, rejection.error, rejection.reason)
    assert policy.writer.flush()
    content = policy.writer.path.read_text()
    assert content.count("\n") == 4 and "room=7" in content
    assert key not in content


@pytest.mark.parametrize("compress", [False, True])
def test_message_lines_are_exactly_the_json_of_the_record(state, tmp_path, compress):
    """The writer's hand-built message line is byte for byte what json.dumps makes of the same record."""
    policy = log_policy(state, tmp_path, store_client_messages=True, store_server_messages=True,
                        max_payload_bytes=8, compress=compress)
    conn = connection(peer=('10.0.0."1', 1))
    conn.application = ApplicationRef('quo"te\\é', "api_key")
    payloads = [("client", True, "plain"), ("server", True, 'a "q" \\ \n\t\x00 é 😀'), ("client", True, "é" * 9),
                ("server", False, b"\x00\xff" * 3), ("client", False, bytes(20)), ("server", True, "")]
    for direction, is_text, payload in payloads:
        policy.on_message(Message(direction, is_text, payload), conn)
    assert policy.writer.flush()
    lines = policy.writer.path.read_text().splitlines()
    assert len(lines) == len(payloads)
    for line in lines:
        record = json.loads(line)
        assert line == json.dumps(record, separators=(",", ":"))
        assert list(record) == ["record", "ts", "api", "version", "application", "connection", "peer", "direction",
                                "type", "size", "payload", "encoding"]
    decoded = [json.loads(line) for line in lines]
    assert [r["size"] for r in decoded] == [5, len(payloads[1][2].encode()), 18, 6, 20, 0]
    assert decoded[0]["application"] == 'quo"te\\é' and decoded[0]["peer"] == '10.0.0."1'
    wide = log_policy(state, tmp_path, store_client_messages=True, compress=compress, file="wide.jsonl")
    long_texts = ["y" * 300, "y" * 300 + '"', "y" * 300 + "\x7f", "y" * 300 + "\x1f", "y" * 300 + "é"]
    for text in long_texts:
        wide.on_message(Message("client", True, text), conn)
    assert wide.writer.flush()
    lines = wide.writer.path.read_text().splitlines()
    assert [json.loads(line)["size"] for line in lines] == [len(t.encode()) for t in long_texts]
    assert all(line == json.dumps(json.loads(line), separators=(",", ":")) for line in lines)


def test_records_reach_the_structured_log_only_without_a_file_or_when_asked(state, tmp_path):
    """With a file, records stay out of structlog unless `stdout: true`; without a file they go there."""
    filed = log_policy(state, tmp_path, store_client_messages=True)
    both = log_policy(state, tmp_path, store_client_messages=True, stdout=True, file="both.jsonl")
    unfiled = LogInvocation(LogInvocationPolicy(type="log-invocation", store_client_messages=True),
                            policy_build(loaded(ECHO, tmp_path), state=state, base_dir=tmp_path))
    with structlog.testing.capture_logs() as events:
        for policy, word in ((filed, "filed"), (both, "both"), (unfiled, "unfiled")):
            policy.on_message(Message("client", True, word), connection())
            assert policy.writer.flush()
    logged = [e["payload"] for e in events if e.get("record") == "message"]
    assert sorted(logged) == ["both", "unfiled"]
    assert json.loads((tmp_path / "both.jsonl").read_text())["payload"] == "both"
    assert unfiled.writer.path is None


def test_data_masking_of_json_fields_and_patterns(state, tmp_path):
    """Mask rules replace a JSON field at any depth, a dotted path from the top, and pattern matches; sizes stay
    those of the real messages, the relayed message is untouched, and the values never reach the file."""
    mask = [{"json_field": "password"}, {"json_field": "card.number", "replacement": "XXXX"},
            {"pattern": r"\b\d{3}-\d{2}-\d{4}\b", "replacement": "[ssn]"}]
    policy = log_policy(state, tmp_path, store_client_messages=True, store_server_messages=True, mask=mask)
    conn = connection()
    sent = [
        '{"user":"bob","password":"hunter2","profile":{"password":"hunter3"},"card":{"number":"4111111111111111"}}',
        '[{"card":{"number":"4000"}},{"nested":{"card":{"number":"kept"}}}]',
        "ssn 123-45-6789 in plain text, and {not json",
    ]
    for text in sent:
        message = Message("client", True, text)
        assert policy.on_message(message, conn) is message  # logging never changes what is relayed
    policy.on_message(Message("server", False, b"\x00password\x01"), conn)  # binary: stored as is
    first, second, third, binary = [r for r in records(policy) if r["record"] == "message"]
    assert json.loads(first["payload"]) == {"user": "bob", "password": "***", "profile": {"password": "***"},
                                            "card": {"number": "XXXX"}}
    assert json.loads(second["payload"]) == [{"card": {"number": "XXXX"}}, {"nested": {"card": {"number": "kept"}}}]
    assert third["payload"] == "ssn [ssn] in plain text, and {not json"
    assert [r["size"] for r in (first, second, third)] == [len(t.encode()) for t in sent]
    assert base64.b64decode(binary["payload"]) == b"\x00password\x01"
    text = policy.writer.path.read_text()
    assert not any(secret in text for secret in ("hunter2", "hunter3", "4111111111111111", "123-45-6789"))


def test_mask_rules_are_checked_by_validate(tmp_path):
    """A mask rule with a broken pattern, or with neither or both targets, is a config error at its line."""
    from config_helpers import API as API_YAML
    from config_helpers import base, run_check

    chain = ("  - type: log-invocation\n    store_client_messages: true\n    mask:\n"
             "      - pattern: '(unclosed'\n      - replacement: x\n")
    base(tmp_path, api=API_YAML + chain)
    result = run_check(tmp_path)
    problems = [(d.code, d.location.line) for d in result.errors]
    assert len(problems) == 2 and {line for _, line in problems} == {13, 14}, result.diagnostics


async def test_loop_encoded_lines_keep_order_with_thread_encoded_records(state, tmp_path):
    """On a running loop, message lines batched on the loop and the upgrade/close records encoded in the writer
    thread reach the file in the order they were written."""
    policy = log_policy(state, tmp_path, store_client_messages=True, store_server_messages=True)
    assert policy._write_line is not None  # the loop-encoded path is the one under test
    conn = connection()
    policy.on_outcome(conn, 101, None, None)
    for i in range(5):
        policy.on_message(Message("client" if i % 2 else "server", True, f"m{i}"), conn)
    policy.on_close(conn, 1000, "bye")
    kept = records(policy)
    assert [r["record"] for r in kept] == ["upgrade"] + ["message"] * 5 + ["close"]
    assert [r["payload"] for r in kept[1:-1]] == [f"m{i}" for i in range(5)]


async def test_a_lone_line_reaches_the_file_after_the_hand_off_delay(state, tmp_path):
    """A line batched on the loop is handed to the writer by the loop's timer, without any flush."""
    policy = log_policy(state, tmp_path, store_client_messages=True)
    writer = policy.writer
    writer.HANDOFF_DELAY = 0.01  # the instance's own: the class default stays for everyone else
    policy.on_message(Message("client", True, "alone"), connection())
    assert writer._batch  # still on the loop
    while writer._batch:
        await asyncio.sleep(0.005)
    done = threading.Event()
    writer._pending.append(done)  # a flush that does not hand off what the loop holds
    writer._wake.set()
    assert done.wait(5)
    assert json.loads(writer.path.read_text())["payload"] == "alone"


async def test_a_batch_crossing_max_file_bytes_rotates_after_the_line_that_crossed(state, tmp_path):
    """Lines handed over as one batch still rotate record by record: no file grows past the limit by more than
    the record that crossed it."""
    policy = log_policy(state, tmp_path, store_client_messages=True, max_file_bytes=600, backups=5)
    conn = connection()
    for i in range(12):
        policy.on_message(Message("client", True, f"payload-{i:02d}"), conn)
    assert policy.writer.flush()
    path = policy.writer.path
    files = [path.with_name(f"{path.name}.{n}") for n in range(5, 0, -1)] + [path]
    texts = [f.read_text() for f in files if f.exists()]
    assert len(texts) >= 3
    line = max(len(row) + 1 for text in texts for row in text.splitlines())
    assert all(len(text) < 600 + line for text in texts)
    payloads = [json.loads(row)["payload"] for text in texts for row in text.splitlines()]
    assert payloads == [f"payload-{i:02d}" for i in range(12)]


async def test_lines_past_max_pending_are_dropped_and_counted(state, tmp_path):
    """The loop's batches count against the writer's bound like any record: past it, lines are dropped and
    counted instead of queued."""
    policy = log_policy(state, tmp_path, store_client_messages=True)
    writer = policy.writer
    writer.max_pending = 3
    writer._taken = writer._queued  # nothing waiting
    writer._queued += 3  # as if three records were waiting on a stalled disk
    conn = connection()
    policy.on_message(Message("client", True, "one"), conn)
    assert writer.dropped == 1 and not writer._batch


DEEP_SECRET = '{"password": "hunter2", "data": ' + "[" * 1000 + "]" * 1000 + "}"  # nested past the parser's limit


def test_a_payload_masking_cannot_reach_is_stored_withheld_not_dropped(state, tmp_path):
    """A JSON payload nested too deep to mask keeps its record (file and structlog echo alike), with the payload
    withheld and the reason; the secret in it is stored nowhere and the next record is still written."""
    policy = log_policy(state, tmp_path, store_client_messages=True, mask=[{"json_field": "password"}], stdout=True)
    conn = connection()
    with structlog.testing.capture_logs() as logs:
        for text in (DEEP_SECRET, '{"password": "hunter3"}'):
            message = Message("client", True, text)
            assert policy.on_message(message, conn) is message
        withheld, masked = [r for r in records(policy) if r["record"] == "message"]
    assert withheld["payload"] is None and withheld["payload_withheld"] == "unmaskable: nesting too deep"
    assert withheld["size"] == len(DEEP_SECRET) and withheld["encoding"] == "text"
    assert json.loads(masked["payload"]) == {"password": "***"} and "payload_withheld" not in masked
    echoed = [e for e in logs if e["event"] == "message"]
    assert [e.get("payload_withheld") for e in echoed] == ["unmaskable: nesting too deep", None]
    assert not [e for e in logs if e["event"] == "transaction_records_failed"]
    assert "hunter" not in policy.writer.path.read_text() and "hunter" not in repr(logs)


def test_writer_failures_are_logged_once_per_interval_with_a_count(tmp_path):
    """300 records whose encoding fails within one interval give one `transaction_records_failed` line at once (with
    a traceback) and the rest of the count when the writer closes, not a line per record; the good records around
    them are written."""
    from gateway.policies.state import LogWriter, encode_record

    def broken(item: tuple) -> bytes:
        raise RuntimeError("encoder bug")

    writer = LogWriter(tmp_path / "t.jsonl", 1 << 20, 1)
    writer.FAILURE_LOG_INTERVAL = 3600.0  # the whole test is one interval, however slow the machine
    with structlog.testing.capture_logs() as logs:
        try:
            writer.write((encode_record, None, {"record": "first"}))
            for _ in range(300):
                writer.write((broken, None))
            writer.write((encode_record, None, {"record": "last"}))
            assert writer.flush()
            (first,) = [e for e in logs if e["event"] == "transaction_records_failed"]
            assert first["failed"] == 1 and isinstance(first["exc_info"], RuntimeError)
        finally:
            writer.close()
    assert [e["failed"] for e in logs if e["event"] == "transaction_records_failed"] == [1, 299]
    assert [json.loads(line)["record"] for line in writer.path.read_text().splitlines()] == ["first", "last"]
