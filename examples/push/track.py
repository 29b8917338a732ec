"""A tiny tracking backend: posts tracking events for a shipment to wsgate's push API.

    TRACKING_PUSH_KEY=tracker-secret python examples/push/track.py SHIP-1 "picked up" "in transit" "delivered"

Every browser that follows the shipment (the Tracking API with ``?shipment=SHIP-1``; open
http://localhost:8765/track.html) receives each event. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

PUSH_API = os.environ.get("WSGATE_PUSH_URL", "http://127.0.0.1:9910")


def post(shipment: str, status: str, key: str) -> dict[str, object]:
    event = {"shipment": shipment, "status": status, "at": time.strftime("%H:%M:%S")}
    request = urllib.request.Request(
        f"{PUSH_API}/apis/Tracking/groups/shipment:{shipment}/messages",
        data=json.dumps(event).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, object] = json.load(response)
            return answer
    except urllib.error.HTTPError as exc:  # a refusal: short JSON saying why
        refusal: dict[str, object] = json.load(exc)
        return refusal


def main() -> int:
    key = os.environ.get("TRACKING_PUSH_KEY", "")
    if len(sys.argv) < 3 or not key:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    shipment, statuses = sys.argv[1], sys.argv[2:]
    for status in statuses:
        print(f"{shipment}: {status} -> {post(shipment, status, key)}")
        time.sleep(1)  # one event a second, so the page shows them arrive
    return 0


if __name__ == "__main__":
    sys.exit(main())
