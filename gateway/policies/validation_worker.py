"""The validation worker: one process per gateway process that checks big text payloads off the event loop.

A 1.7 MB JSON message costs 40-140 ms to parse and validate; on the event loop
every other connection of the process waits for it. A thread does not help:
json's parser and jsonschema-rs hold the GIL for the whole call, and the loop
then waits for the GIL instead (``benchmarks/message_relay_micro.py
--big-neighbour``). The payload crosses a pipe (pickled in the executor's
feeder thread, not on the loop); the worker builds each direction's matcher
once and keeps it under a hash of its definitions.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from ..config.models import MessageDefinition
from .message_matcher import Matcher, Violation

_worker: ProcessPoolExecutor | None = None  # this process's one validation worker, made on first use
_worker_matchers: dict[str, Matcher] = {}  # in the worker: the matchers it compiled, by their key
_WORKER_MATCHERS = 256


def worker_pool() -> ProcessPoolExecutor:
    """The process big payloads are checked in, for every policy of this gateway process.

    One process: enough to take the work off the loop (the loop checked one message at a time before). A
    fork server, not a fork: this process has threads (log writers, executors), which a fork copies mid-step.
    """
    global _worker
    if _worker is None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        _worker = ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_in_worker)
    return _worker


def _in_worker() -> None:
    """The worker's start: a Ctrl-C reaches the whole process group, and the gateway decides how to stop (its
    exit ends the worker); without this the worker would print a KeyboardInterrupt traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def replace_worker(broken: ProcessPoolExecutor) -> None:
    """Forget a pool whose process died (``BrokenProcessPool``): the next ``worker_pool()`` starts a new one."""
    global _worker
    if _worker is broken:
        _worker = None
        broken.shutdown(wait=False, cancel_futures=True)


def check_in_worker(key: str, definitions: tuple[MessageDefinition, ...], discriminator: str | None,
                     payload: str | bytes) -> Violation | None:
    """``Matcher.check`` of a text payload, in the worker (``key`` names the matcher it keeps)."""
    matcher = _worker_matchers.get(key)
    if matcher is None:
        if len(_worker_matchers) >= _WORKER_MATCHERS:
            _worker_matchers.clear()  # reloads changed the definitions many times: start over
        matcher = _worker_matchers[key] = Matcher(definitions, discriminator)
    return matcher.check(True, payload)


def ready() -> bool:
    """A no-op: submitting it starts the worker."""
    return True


def matcher_key(definitions: Sequence[MessageDefinition], discriminator: str | None) -> str:
    """What the worker keeps a matcher under: the same definitions give the same key, across reloads too."""
    dumped = [d.model_dump(mode="json", by_alias=True) for d in definitions]
    text = json.dumps([dumped, discriminator], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
