"""Push: backends reach the clients' connections (send, close, describe, groups, publish), across workers and
instances (issue 23, docs/push.md).

Sits between ``relay`` (a push enters the message relay's server-to-client
stage) and ``edge`` (the listener registers connections and joins their
groups at the upgrade); ``serving`` starts the push API's listener and the
cluster transport.
"""

from .dispatch import Dispatcher
from .hub import PushHub

__all__ = ["Dispatcher", "PushHub"]
