"""wsgate: a declarative WebSocket API gateway.

The names exported here are the API that operator code (transform callables)
may import. They are loaded on first use, so that importing one inner module
(``gateway.wire.frames``) does not load the config models (pydantic,
jsonschema, ruamel.yaml) with the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DROP", "TransformContext", "__version__"]

if TYPE_CHECKING:
    from .policies.base import DROP
    from .policies.transform import TransformContext


def __getattr__(name: str) -> Any:
    if name == "DROP":
        from .policies.base import DROP

        return DROP
    if name == "TransformContext":
        from .policies.transform import TransformContext

        return TransformContext
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
