"""The native echo broadcaster the gateway fronts in examples, tests and benchmarks.

Each URL context of an ``EchoServer`` resource is a room (every client gets
every text message as ``Message Received from {user}: {message}``) or a plain
echo; the server also serves a demo page and the tutorial's
``startDemoAPI`` / ``stopDemoAPI`` control endpoints.
"""

from .server import EchoService, run, serve_echo_servers

__all__ = ["EchoService", "run", "serve_echo_servers"]
