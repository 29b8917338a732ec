"""The image runs what the docs promise: the Dockerfile installs every runtime extra of pyproject.toml, and each
documented optional feature's modules import in the environment it describes (this venv has them all)."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Extras that are not run-time features of the image.
NOT_RUNTIME = {"test"}
# Each runtime extra: the feature it enables (as the docs name it), the third-party modules it needs, and our
# module that uses them.
FEATURES = {
    "redis": ("shared state across workers and instances (state: {backend: redis})",
              ["redis", "redis.asyncio", "hiredis"], "gateway.state.redis"),
    "hashes": ("bcrypt and argon2 basic passwords", ["bcrypt", "argon2"], "gateway.build.hashes"),
    "otel": ("tracing over OTLP (OTEL_* environment)",
             ["opentelemetry.trace", "opentelemetry.sdk.trace",
              "opentelemetry.exporter.otlp.proto.http.trace_exporter"],
             "gateway.operations.tracing"),
    "fast-validation": ("the compiled JSON Schema validator of validate-messages", ["jsonschema_rs"],
                        "gateway.config.message_schemas"),
}


def dockerfile_extras() -> list[str]:
    """The extras the Dockerfile's `pip install -e '.[...]'` names."""
    text = (ROOT / "Dockerfile").read_text()
    found = re.findall(r"pip install[^\n]*?-e\s+'\.\[([^\]]*)\]'", text)
    assert len(found) == 1, "one pip install of the package with extras"
    return [e.strip() for e in found[0].split(",")]


def runtime_extras() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(data["project"]["optional-dependencies"]) - NOT_RUNTIME


def test_dockerfile_installs_every_runtime_extra():
    """Every extra of pyproject.toml but `test` is in the image, and each has a feature entry here (a new extra
    must say what it is for, and what to import to prove it works)."""
    assert set(dockerfile_extras()) == runtime_extras()
    assert set(FEATURES) == runtime_extras()


@pytest.mark.parametrize("extra", sorted(FEATURES))
def test_each_feature_of_the_image_imports(extra):
    """The modules the feature needs import, and so does our module that uses them."""
    _, modules, ours = FEATURES[extra]
    assert extra in dockerfile_extras()
    for name in [*modules, ours]:
        importlib.import_module(name)
