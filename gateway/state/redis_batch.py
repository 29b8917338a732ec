"""Slot takes and give-backs coalesced: every change a round trip can carry goes in one script call.

A **batch** holds the give-backs queued since the last call (per key, how
many) and the takes issued since then (each with its own key, limit and
answer). :data:`SYNC` applies it atomically in Redis: give-backs first (those
connections have ended), then the takes in the order they were issued, each
judged against the live owners' counts exactly as a lone take would be, so the
limit holds under any mix of batches from any number of instances. The script
answers one 1/0 per take, or -1 for the whole batch when Redis does not know
the owner (nothing was applied: the caller re-asserts and tries again).

:class:`ScriptLine` is one connection of redis-py's own kept for these calls:
one batch in flight at a time (what arrives meanwhile waits for the next), so
no pool lookup, lock or response callback is paid per call.

Pure apart from ``ScriptLine``: ``SlotBatch`` is tested with plain values.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

from .base import OnStateError, Taken

# KEYS[1] owners zset, KEYS[2..] slot hashes; ARGV[1] owner, ARGV[2..#KEYS] give-backs per hash (in KEYS order),
# then one (hash index from 1, limit) pair per take. -1: owner unknown or expired; else one 1/0 per take.
SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner = ARGV[1]
local mine = redis.call('ZSCORE', KEYS[1], owner)
if not mine or tonumber(mine) < now then return -1 end
local hashes = #KEYS - 1
for i = 1, hashes do
  local n = tonumber(ARGV[i + 1])
  if n > 0 and redis.call('HINCRBY', KEYS[i + 1], owner, -n) <= 0 then redis.call('HDEL', KEYS[i + 1], owner) end
end
local totals, answers = {}, {}
for j = hashes + 2, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[j]) + 1]
  local total = totals[key]
  if total == nil then
    total = 0
    local fields = redis.call('HGETALL', key)
    for i = 1, #fields, 2 do
      local expiry = redis.call('ZSCORE', KEYS[1], fields[i])
      if expiry and tonumber(expiry) >= now then
        total = total + tonumber(fields[i + 1])
      else
        redis.call('HDEL', key, fields[i])
      end
    end
  end
  if total < tonumber(ARGV[j + 1]) then
    redis.call('HINCRBY', key, owner, 1)
    total = total + 1
    answers[#answers + 1] = 1
  else
    answers[#answers + 1] = 0
  end
  totals[key] = total
end
return answers
"""
SYNC_SHA = hashlib.sha1(SYNC.encode()).hexdigest()


class Take:
    """One take waiting for its answer (``attempts``: how many batches carried it and came back -1)."""

    __slots__ = ("key", "limit", "on_error", "answer", "attempts")

    def __init__(self, key: str, limit: int, on_error: OnStateError, answer: asyncio.Future[Taken]) -> None:
        self.key = key
        self.limit = limit
        self.on_error = on_error  # what the take's throttle answers while Redis cannot be reached
        self.answer = answer
        self.attempts = 0


class SlotBatch:
    """What one script call carries: give-backs per key and takes in issue order."""

    __slots__ = ("gives", "takes")

    def __init__(self) -> None:
        self.gives: dict[str, int] = {}
        self.takes: list[Take] = []

    def __bool__(self) -> bool:
        return bool(self.gives or self.takes)

    def encode(self, owners: str, owner: str, slot_key: Callable[[str], str]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of :data:`SYNC` (each slot hash once)."""
        index: dict[str, int] = {}
        for key in self.gives:
            index[key] = len(index) + 1
        for take in self.takes:
            if take.key not in index:
                index[take.key] = len(index) + 1
        args: list[Any] = [owner, *(self.gives.get(key, 0) for key in index)]
        for take in self.takes:
            args.append(index[take.key])
            args.append(take.limit)
        return [owners, *map(slot_key, index)], args


class ScriptLine:
    """One redis-py connection that runs :data:`SYNC`, loading it again when Redis lost it (a restart)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.connection: Any = None

    async def run(self, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import ConnectionError, NoScriptError

        if self.connection is None:
            self.connection = await self.client.connection_pool.get_connection()
        connection = self.connection
        # Kept outside the pool, the line misses the pool's check of a connection it hands out: one the server
        # closed (a Redis restart) would fail this call. Its end of stream is seen without a syscall; a closed
        # one is disconnected here and the send below connects afresh. Never a resend after a send: a take
        # Redis may have applied is not sent twice.
        try:
            if await connection.can_read():  # bytes nobody asked for: never read them as an answer
                await connection.disconnect(nowait=True)
        except ConnectionError:  # closed by the server
            await connection.disconnect(nowait=True)
        try:
            await connection.send_packed_command(
                connection.pack_command("EVALSHA", SYNC_SHA, len(keys), *keys, *args), check_health=False)
            return await connection.read_response()
        except NoScriptError:
            await connection.send_packed_command(
                connection.pack_command("EVAL", SYNC, len(keys), *keys, *args), check_health=False)
            return await connection.read_response()
        except BaseException:
            # A reply still on its way (a timeout, a cancel) must never be read as the next call's answer.
            await connection.disconnect(nowait=True)
            raise

    async def renew(self) -> None:
        """Drop the kept connection (the next call connects afresh): after an outage it is dead whatever it
        looks like, and the first take after recovery must be decided by Redis, not fail on it."""
        if self.connection is not None:
            await self.connection.disconnect(nowait=True)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.disconnect(nowait=True)
            await self.client.connection_pool.release(self.connection)
            self.connection = None
