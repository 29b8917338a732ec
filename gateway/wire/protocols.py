"""The logger every websockets sans-I/O protocol object the gateway creates is given.

websockets' protocols log at INFO on every open and close; the gateway makes one per unusual upgrade head,
per upstream 101 check and per message-relay leg, so that stays off the hot path (and out of the logs).
"""

from __future__ import annotations

import logging

QUIET = logging.getLogger("wsgate.wsproto")
QUIET.setLevel(logging.WARNING)
