"""The transform policy: operator callables loaded from a module, sync or async, and their failures."""

from __future__ import annotations

import asyncio
import itertools
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog
from policy_helpers import connection, policy_build, settle

from gateway import DROP
from gateway.config.models import TransformPolicy
from gateway.policies.base import ApplicationRef, Close, Message
from gateway.policies.transform import Transform, TransformContext, load_callable

MODULE = '''
import asyncio
from gateway import DROP

def upper(ctx):
    return ctx.payload.upper() if ctx.is_text else ctx.payload

async def async_upper(ctx):
    await asyncio.sleep(0)
    return ctx.payload.upper()

def to_binary(ctx):
    return ctx.payload.encode("utf-8")

def to_text(ctx):
    return bytes(ctx.payload).decode("utf-8")

def drop(ctx):
    return DROP

def boom(ctx):
    raise ValueError("cannot transform")

async def async_boom(ctx):
    raise ValueError("cannot transform")

def nothing(ctx):
    return None

seen = []

def record(ctx):
    seen.append(ctx)
    return ctx.payload
'''

_names = itertools.count()


def load(tmp_path: Path, function: str):
    """Write the operator module to tmp_path (fresh name) and load one function from it."""
    name = f"operator_transforms_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    return load_callable(f"{name}:{function}", [tmp_path]), name


def transform(tmp_path: Path, function: str, **spec) -> Transform:
    _, name = load(tmp_path, function)
    spec.setdefault("stage", "client")
    return Transform(TransformPolicy(type="transform", callable=f"{name}:{function}", **spec),
                     policy_build(base_dir=tmp_path))


def text(payload: str) -> Message:
    return Message("client", True, payload)


def test_load_callable_leaves_sys_path_alone(tmp_path):
    """`load_callable` finds the module in the search path and removes that path from sys.path afterwards."""
    import sys

    fn, _ = load(tmp_path, "upper")
    assert fn(SimpleNamespace(payload="hi", is_text=True)) == "HI"  # the module's function, not just any callable
    assert str(tmp_path) not in sys.path


def test_sync_callable(tmp_path):
    """A sync callable's str result replaces the text payload, synchronously."""
    result = transform(tmp_path, "upper").on_message(text("hello"), connection())
    assert result == Message("client", True, "HELLO")


def test_async_callable(tmp_path):
    """An async callable is awaited and its result replaces the payload."""
    result = transform(tmp_path, "async_upper").on_message(text("hello"), connection())
    assert asyncio.iscoroutine(result)
    assert settle(result) == Message("client", True, "HELLO")


def test_returning_bytes_makes_a_binary_message(tmp_path):
    """Returning bytes for a text message turns it into a binary message."""
    assert transform(tmp_path, "to_binary").on_message(text("héllo"), connection()) == Message(
        "client", False, "héllo".encode())


def test_returning_str_makes_a_text_message(tmp_path):
    """Returning str for a binary message turns it into a text message."""
    result = transform(tmp_path, "to_text").on_message(Message("client", False, b"hi"), connection())
    assert result == Message("client", True, "hi")


def test_drop(tmp_path):
    """Returning gateway.DROP drops the message."""
    assert transform(tmp_path, "drop").on_message(text("x"), connection()) is DROP


def test_messages_filter(tmp_path):
    """With `messages: text` binary messages pass untouched, and `binary` leaves text untouched."""
    binary = Message("client", False, b"\x00\x01")
    assert transform(tmp_path, "drop", messages="text").on_message(binary, connection()) is binary
    message = text("keep")
    assert transform(tmp_path, "drop", messages="binary").on_message(message, connection()) is message
    assert transform(tmp_path, "drop", messages="binary").on_message(binary, connection()) is DROP


def test_context_fields(tmp_path):
    """The callable gets direction, type, payload, API, application, connection id and metadata."""
    _, name = load(tmp_path, "record")
    policy = Transform(TransformPolicy(type="transform", stage="server", callable=f"{name}:record"),
                       policy_build(base_dir=tmp_path))
    conn = connection(query="room=1")
    conn.application = ApplicationRef("alpha", "api_key")
    policy.on_message(Message("server", True, "hi"), conn)
    import importlib

    (ctx,) = importlib.import_module(name).seen
    assert isinstance(ctx, TransformContext)
    assert (ctx.direction, ctx.is_text, ctx.payload, ctx.api, ctx.application, ctx.connection_id) == (
        "server", True, "hi", "Echo", "alpha", conn.id)
    assert ctx.metadata["query"] == "room=1"
    assert policy.message_stages == frozenset({"server"})


@pytest.mark.parametrize("function", ["boom", "async_boom"])
def test_on_error_close_logs_without_payload(tmp_path, function):
    """By default an exception closes with 1011 and logs an error event that does not contain the payload."""
    with structlog.testing.capture_logs() as events:
        result = settle(transform(tmp_path, function).on_message(text("secret-payload-42"), connection()))
    assert result == Close(1011, "transform failed")
    (event,) = [e for e in events if e["event"] == "transform_failed"]
    assert event["log_level"] == "error" and event["api"] == "Echo" and "ValueError" in event["error"]
    assert "secret-payload-42" not in repr(events)


def test_on_error_pass(tmp_path):
    """With `on_error: pass` the original message goes on."""
    message = text("original")
    with structlog.testing.capture_logs() as events:
        assert transform(tmp_path, "boom", on_error="pass").on_message(message, connection()) is message
    assert any(e["event"] == "transform_failed" for e in events)


def test_on_error_drop(tmp_path):
    """With `on_error: drop` the message is dropped."""
    with structlog.testing.capture_logs():
        assert transform(tmp_path, "boom", on_error="drop").on_message(text("x"), connection()) is DROP


def test_returning_none_is_an_error(tmp_path):
    """Returning None is treated like an exception (close 1011), with a log event naming the mistake."""
    with structlog.testing.capture_logs() as events:
        result = transform(tmp_path, "nothing").on_message(text("x"), connection())
    assert result == Close(1011, "transform failed")
    assert any("NoneType" in e.get("error", "") for e in events)
