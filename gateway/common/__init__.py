"""Leaves every part may use: redaction of credentials, logging setup, build counters."""
