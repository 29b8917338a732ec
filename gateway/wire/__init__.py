"""The wire: hand-written fast parsers in front of websockets, in one place.

Each module here takes the common case of something websockets also parses, and only ever accepts a subset
of what websockets accepts, with the same result: ``request_head`` (a client's upgrade request head),
``upstream_response`` (an upstream's 101), ``frames`` (frame heads and frames, for the byte relay's scanner
and the message relay's common-frame path). ``protocols`` holds the quiet logger every sans-I/O websockets
object the gateway makes is given. They import websockets and the standard library only, so the relay and
the edge can both use them, and a websockets upgrade has this one folder to re-check:
``tests/test_wire_differential.py`` runs each parser against websockets on the same random bytes.
"""
