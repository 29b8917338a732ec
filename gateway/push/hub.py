"""This process's pushable connections, by id, API and group, and the local answer to every push request.

The listener registers a connection of an API with ``push`` once it is
relayed (``opened``) and the connection's end removes it (``conn.defer``).
``handle`` answers a request for one of them; ``publish`` hands a message to
the members of a group here. Where a connection lives (this process, a
sibling worker, another instance) is ``dispatch.py``'s question, not this
module's.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import structlog

from .messages import NOT_FOUND, CloseOne, Describe, Join, Publish, Reply, Request, Send
from .session import Session
from .stats import PushStats

if TYPE_CHECKING:
    from ..config.models import APIPush
    from ..policies.base import ConnectionContext
    from ..relay.message import MessageRelay

log = structlog.get_logger("wsgate.push")

_SEND_STATUS = {"delivered": 200, "queued": 202}


class PushHub:
    """Sessions by connection id, and group members by (API, group)."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.by_api: dict[str, set[Session]] = defaultdict(set)
        self.groups: dict[tuple[str, str], set[Session]] = {}
        self.stats = PushStats()

    # ------------------------------------------------------------ membership
    def opened(self, conn: ConnectionContext, relay: MessageRelay, settings: APIPush,
               groups: tuple[str, ...]) -> Session:
        session = Session(conn, relay, settings, (), self.stats)
        self.sessions[conn.id] = session
        self.by_api[conn.api].add(session)
        for group in groups:
            self._join(session, group)
        conn.defer(lambda: self.forget(session))
        return session

    def forget(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        members = self.by_api.get(session.api)
        if members is not None:
            members.discard(session)
            if not members:
                del self.by_api[session.api]
        for group in list(session.groups):
            self._leave(session, group)
        session.forget()

    def _join(self, session: Session, group: str) -> None:
        session.groups.add(group)
        self.groups.setdefault((session.api, group), set()).add(session)

    def _leave(self, session: Session, group: str) -> None:
        session.groups.discard(group)
        key = (session.api, group)
        members = self.groups.get(key)
        if members is not None:
            members.discard(session)
            if not members:
                del self.groups[key]

    def find(self, api: str, connection: str) -> Session | None:
        """The session of ``connection`` if it is here and belongs to ``api`` (another API's is not found)."""
        session = self.sessions.get(connection)
        return session if session is not None and session.api == api else None

    # ------------------------------------------------------------- requests
    def handle(self, request: Request) -> Reply:
        """The answer to a request for a connection, by the process holding it (404 when it does not)."""
        session = self.find(request.api, request.connection)
        if session is None:
            return NOT_FOUND
        if isinstance(request, Send):
            outcome = session.offer(request.is_text, request.data)
            if outcome in _SEND_STATUS:
                return Reply(_SEND_STATUS[outcome], {"connection": session.id, "result": outcome})
            if outcome == "gone":
                return Reply.error(410, "gone", "the connection is closing")
            return Reply.error(429, "queue_full", "the connection's push queue is full: "
                               + ("it was closed with 1013" if outcome == "closed" else "the message was dropped"),
                               result=outcome)
        if isinstance(request, CloseOne):
            log.info("push_close", api=request.api, connection=session.id, code=request.code)
            session.relay.close(request.code, request.reason)
            return Reply(200, {"connection": session.id, "result": "closing"})
        if isinstance(request, Describe):
            return Reply(200, session.describe())
        if isinstance(request, Join):
            if request.leave:
                self._leave(session, request.group)
            else:
                self._join(session, request.group)
            return Reply(200, {"connection": session.id, "groups": sorted(session.groups)})
        raise TypeError(f"not a push request: {request!r}")

    def publish(self, message: Publish) -> int:
        """Offer ``message`` to its members here; how many took it (delivered or queued)."""
        if message.group is None:
            members = self.by_api.get(message.api, ())
        else:
            members = self.groups.get((message.api, message.group), ())
        handed = 0
        for session in list(members):
            if session.offer(message.is_text, message.data) in ("delivered", "queued"):
                handed += 1
        return handed

    # -------------------------------------------------------------- reading
    def groups_of(self, connection: str) -> list[str]:
        session = self.sessions.get(connection)
        return sorted(session.groups) if session is not None else []

    def group_sizes(self) -> dict[str, dict[str, Any]]:
        """Per API: how many groups, memberships and the largest group (bounded metric labels: no group names)."""
        out: dict[str, dict[str, Any]] = {}
        for (api, _), members in self.groups.items():
            entry = out.setdefault(api, {"groups": 0, "members": 0, "largest": 0})
            entry["groups"] += 1
            entry["members"] += len(members)
            entry["largest"] = max(entry["largest"], len(members))
        return out
