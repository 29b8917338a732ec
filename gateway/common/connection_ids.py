"""Connection ids unique across a cluster, naming the process that holds the connection.

An id reads ``<instance>.<worker>.<counter>``: ``instance`` is random per
process start (or ``WSGATE_INSTANCE_ID``; a supervisor hands its own to its
workers through that variable), ``worker`` is ``0`` in a single process and
``<index>-<pid>`` in a supervisor's worker (the pid keeps a restarted worker's
counter from reusing a dead one's ids), ``counter`` counts from 1 per process.
A request for a connection can therefore go straight to its owner: the push
API parses the id instead of asking anyone where the connection lives.

``ids`` is this process's one source; the runtime and the workers configure
it before their first connection.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from dataclasses import dataclass

INSTANCE_ENV = "WSGATE_INSTANCE_ID"
_INSTANCE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_WORKER = re.compile(r"^(0|(\d+)-(\d+))$")


@dataclass(frozen=True, slots=True)
class Owner:
    """The process holding a connection: its instance and, with ``--workers``, which worker (index and pid)."""

    instance: str
    worker: str = "0"  # "0" (single process) or "<index>-<pid>"

    @property
    def key(self) -> str:
        """``<instance>.<worker>``: the prefix of every id this process gives, and its cluster channel's name."""
        return f"{self.instance}.{self.worker}"

    @property
    def index(self) -> int | None:
        """The worker's index under its supervisor (None: a single process)."""
        match = _WORKER.match(self.worker)
        return int(match.group(2)) if match and match.group(2) else None

    @property
    def pid(self) -> int | None:
        match = _WORKER.match(self.worker)
        return int(match.group(3)) if match and match.group(3) else None


def instance_from_environment(environ: dict[str, str] | None = None) -> str:
    """``WSGATE_INSTANCE_ID`` when it is a valid id (lowercase letters, digits, '-'), else 8 random hex digits."""
    value = (environ if environ is not None else os.environ).get(INSTANCE_ENV, "").strip().lower()
    return value if _INSTANCE.match(value) else secrets.token_hex(4)


def parse(connection_id: str) -> Owner | None:
    """The owner an id names; None for text that is no id of ours (the push API answers 404)."""
    parts = connection_id.split(".")
    if len(parts) != 3 or not _INSTANCE.match(parts[0]) or not _WORKER.match(parts[1]) or not parts[2].isdigit():
        return None
    return Owner(parts[0], parts[1])


class ConnectionIds:
    """Gives this process's connection ids."""

    __slots__ = ("owner", "_prefix", "_counter")

    def __init__(self) -> None:
        self.configure(Owner(instance_from_environment()))

    def configure(self, owner: Owner) -> None:
        """Name this process (before its first connection): a worker calls it with its index and pid."""
        self.owner = owner
        self._prefix = owner.key + "."
        self._counter = itertools.count(1)

    def as_worker(self, index: int) -> None:
        """This process is worker ``index`` of a supervisor whose instance id is in the environment."""
        self.configure(Owner(instance_from_environment(), f"{index}-{os.getpid()}"))

    def next(self) -> str:
        return self._prefix + str(next(self._counter))


ids = ConnectionIds()
