"""How many times this process built each config artefact: the seam that shows one build per reload.

``built[kind]`` goes up by one each time an artefact is made from a config:
``server_tls`` (one port's TLS contexts), ``upstream_tls`` (one API's client
context), ``app_index`` (the application index and its JWT verifiers) and
``disruptions`` (what a change does to live connections). Bumped once per
build, never per upgrade or message; tests read the difference across a
reload (a counter, not a timing).
"""

from __future__ import annotations

from collections import Counter

built: Counter[str] = Counter()


def count(kind: str) -> None:
    """One more ``kind`` artefact built in this process."""
    built[kind] += 1
