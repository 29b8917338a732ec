"""Origin patterns, compiled once per process: ``build()`` compiles every pattern of a config, and the origin
policies of the route table built from it get those very objects.

A pattern is a pure function of its text, so the memo is keyed by the text: a reload that keeps a pattern
compiles nothing, and ``gateway.common.build_counts`` counts each compile (``origin_patterns``).
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..common.build_counts import count


@lru_cache(maxsize=4096)
def origin_pattern(allowed: str) -> re.Pattern[str]:
    """``https://*.example.com`` -> one DNS label or more in place of ``*``, nothing else loosened."""
    count("origin_patterns")
    escaped = re.escape(allowed.rstrip("/").lower()).replace(r"\*", r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")
    return re.compile(f"^{escaped}$")
