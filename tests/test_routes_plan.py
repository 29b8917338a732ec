"""plan and reload on message routes: a removed or re-pointed route drains only the connections that used it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from support import PORT, TIMEOUT, gw_url, recording_backend, reloadable_gateway, write_config
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.build.apps import AppIndex
from gateway.changes.impact import Accepted, Action, decide
from gateway.changes.plan import diff, render


def routed(*routes: tuple[str, str]) -> str:
    lines = "".join(f'  - key: {key}\n    integration: {{websocket: {{url: "{url}"}}}}\n' for key, url in routes)
    return ("kind: API\nname: Chat\npath: /chat\nports: [default]\nroute_selection: {expression: action}\n"
            "routes:\n" + lines)


def settings(grace: float = 0.2) -> str:
    return f"kind: Gateway\nname: g\ndrain_grace: {grace}\nshutdown_timeout: 2\n"


def test_removed_route_drains_only_connections_that_used_it(tmp_path):
    """Removing route join drains a connection that sent to join and keeps one that only used say."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = write_config(tmp_path / "old", PORT, routed(("join", "ws://a:1/j"), ("say", "ws://a:1/s")))
    new = write_config(tmp_path / "new", PORT, routed(("say", "ws://a:1/s")))
    apps = AppIndex.build(new, {})
    used_join = Accepted(port="default", api="Chat", routes=("join", "say"))
    used_say = Accepted(port="default", api="Chat", routes=("say",))
    decision = decide(old, new, apps, used_join)
    assert decision.action is Action.DRAIN and decision.reason == "route 'join' removed"
    assert decide(old, new, apps, used_say).action is Action.KEEP
    assert Accepted.from_dict(used_join.to_dict()).routes == ("join", "say")


def test_plan_shows_route_changes_and_their_impact(tmp_path):
    """plan lists route fields by key, and says a removed route and a re-pointed one drain their users."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = write_config(tmp_path / "old", PORT, routed(("join", "ws://a:1/j"), ("say", "ws://a:1/s")))
    new = write_config(tmp_path / "new", PORT, routed(("say", "ws://a:1/s2"), ("leave", "ws://a:1/l")))
    plan = diff(old, new)
    (change,) = plan.changes
    paths = {f.path: (f.old, f.new) for f in change.fields}
    assert paths["routes[say].integration.websocket.url"] == ("ws://a:1/s", "ws://a:1/s2")
    assert paths["routes[leave].integration.websocket.url"] == (None, "ws://a:1/l")
    assert paths["routes[join].integration.websocket.url"] == ("ws://a:1/j", None)
    reasons = [d.reason for d in change.disruptions]
    assert reasons == ["route 'join' removed", "route 'say' integration changed"]
    assert [dict(d.selector) for d in change.disruptions] == [{"api": "Chat", "route": "join"},
                                                               {"api": "Chat", "route": "say"}]
    # The re-pointed route's disruption is located at its integration in the new file.
    assert change.disruption_locations[1] is not None and change.disruption_locations[1].line == 14
    text = render(plan)
    assert "route 'join' removed" in text and "routes[say].integration.websocket.url" in text
    assert json.loads(render(plan, "json"))["changes"][0]["disruptions"][0]["selector"]["route"] == "join"


async def test_reload_drains_the_users_of_a_removed_route_only(tmp_path):
    """After a reload that removes route join, its user is closed with 1001 and the other client goes on."""
    async with recording_backend() as a:
        docs = (PORT, settings(0.2))
        async with reloadable_gateway(tmp_path, *docs, routed(("join", a.url + "/j"), ("say", a.url + "/s"))) \
                as (gw, root):
            async with connect(gw_url(gw, "/chat")) as joiner, connect(gw_url(gw, "/chat")) as sayer:
                await joiner.send('{"action": "join"}')
                assert await joiner.recv() == '{"action": "join"}'
                await sayer.send('{"action": "say"}')
                assert await sayer.recv() == '{"action": "say"}'
                text = "".join("---\n" + d for d in (*docs, routed(("say", a.url + "/s"))))
                (Path(root) / "gateway.yaml").write_text(text)
                outcome = await gw.reload("test")
                assert outcome.drained == 1
                try:
                    async with asyncio.timeout(TIMEOUT):
                        await joiner.recv()
                except ConnectionClosed:
                    pass
                assert (joiner.close_code, joiner.close_reason) == (1001, "going away: route 'join' removed")
                await sayer.send('{"action": "say", "n": 2}')
                assert await sayer.recv() == '{"action": "say", "n": 2}'
