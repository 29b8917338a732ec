"""wsgate: a declarative WebSocket API gateway.

The names exported here are the API that operator code (transform callables)
may import.
"""

from .policies.base import DROP
from .policies.transform import TransformContext

__all__ = ["DROP", "TransformContext"]
__version__ = "0.1.0"
