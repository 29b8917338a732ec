"""Serving: the running gateway (lifecycle, reload, the connection registry, endpoint health, the watcher,
stop signals)."""
