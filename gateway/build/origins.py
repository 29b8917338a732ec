"""Origin patterns: an origin policy's ``allow`` entries compiled to regular expressions.

The build compiles them to check every pattern of a config (``validate`` fails on one that would not compile);
the origin policy matches with them.
"""

from __future__ import annotations

import re


def origin_pattern(allowed: str) -> re.Pattern[str]:
    """``https://*.example.com`` -> one DNS label or more in place of ``*``, nothing else loosened."""
    escaped = re.escape(allowed.rstrip("/").lower()).replace(r"\*", r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")
    return re.compile(f"^{escaped}$")
