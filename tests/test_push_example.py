"""The README's push walk: a browser-like client follows a shipment on the example Tracking API and receives
the events examples/push/track.py posts through the push API."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from support import TIMEOUT, echo_backend, gw_url, running_gateway, tutorial_tree
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.config import check

TRACK = Path(__file__).resolve().parent.parent / "examples" / "push" / "track.py"


async def test_track_script_reaches_the_followers_of_a_shipment(tmp_path) -> None:
    """Followers of SHIP-1 get each posted event, a follower of SHIP-2 gets none, a bad shipment is refused."""
    async with echo_backend() as backend:
        root = tutorial_tree(tmp_path, backend.port)
        env = {"TRACKING_PUSH_KEY": "tracker-secret"}
        config = check([root], env=env).config
        assert config is not None
        async with running_gateway(config, env=env) as gw:
            follow = "/websocket/Tracking/1.0?x-Gateway-APIKey=tutorial-key&shipment="
            try:
                async with connect(gw_url(gw, follow + "ship%201")):
                    raise AssertionError("a shipment outside the pattern was accepted")
            except InvalidStatus as exc:
                assert exc.response.status_code == 400
            async with connect(gw_url(gw, follow + "SHIP-1")) as first, \
                    connect(gw_url(gw, follow + "SHIP-1")) as second, \
                    connect(gw_url(gw, follow + "SHIP-2")) as other:
                script = await asyncio.create_subprocess_exec(
                    sys.executable, str(TRACK), "SHIP-1", "picked up", "delivered",
                    env={**os.environ, **env, "WSGATE_PUSH_URL": f"http://127.0.0.1:{gw.push.port}"},
                    stdout=asyncio.subprocess.PIPE)
                async with asyncio.timeout(3 * TIMEOUT):
                    output, _ = await script.communicate()
                assert script.returncode == 0
                assert output.decode().count("'delivered': 2") == 2  # each post reached both followers
                for ws in (first, second):
                    events = [json.loads(await ws.recv()) for _ in range(2)]
                    assert [(e["shipment"], e["status"]) for e in events] == [("SHIP-1", "picked up"),
                                                                            ("SHIP-1", "delivered")]
                await other.send("anything for me?")
                assert await other.recv() == "anything for me?"  # the echo answer comes first: no event was pushed
