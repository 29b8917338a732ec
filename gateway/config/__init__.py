"""Load and check a config tree: YAML files -> Config, or diagnostics.

The pipeline itself lives in ``check.py`` (load, schema, models, cross-resource rules); this face re-exports it.
"""

from __future__ import annotations

from .cache import CheckCache
from .check import CheckResult, check, with_source_lines
from .diagnostics import Diagnostic, cut_long_quotes
from .tree import Config, Loaded, Location

__all__ = ["CheckCache", "CheckResult", "Config", "Diagnostic", "Loaded", "Location", "check", "cut_long_quotes",
           "with_source_lines"]
