"""AsyncAPI in and out: ``wsgate import`` and ``wsgate export asyncapi``."""
