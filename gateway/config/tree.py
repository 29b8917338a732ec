"""A checked config: every resource by kind and name, with where it was written."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Mapping, TypeVar

from pydantic import BaseModel

from .models import API, Application, EchoServer, Gateway, Port

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was written: 1-based line and column, like editors and compilers show."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Loaded(Generic[M]):
    """A validated resource and its origin; relative paths in it resolve against ``base_dir``."""

    model: M
    location: Location
    base_dir: Path

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else (self.base_dir / path)


@dataclass(frozen=True)
class Config:
    """The whole checked config tree. Immutable; a reload builds a new one."""

    root: Path
    ports: Mapping[str, Loaded[Port]] = field(default_factory=dict)
    apis: Mapping[str, Loaded[API]] = field(default_factory=dict)
    applications: Mapping[str, Loaded[Application]] = field(default_factory=dict)
    echo_servers: Mapping[str, Loaded[EchoServer]] = field(default_factory=dict)
    gateway: Loaded[Gateway] | None = None

    def resources(self) -> dict[tuple[str, str], BaseModel]:
        """Every resource keyed by (kind, name): what ``plan`` diffs."""
        out: dict[tuple[str, str], BaseModel] = {}
        for group in (self.ports, self.apis, self.applications, self.echo_servers):
            for name, loaded in group.items():
                out[(loaded.model.kind, name)] = loaded.model  # type: ignore[attr-defined]
        if self.gateway is not None:
            out[("Gateway", self.gateway.model.name)] = self.gateway.model
        return out

    @property
    def settings(self) -> Gateway:
        return self.gateway.model if self.gateway else Gateway(kind="Gateway", name="default")

    def digest(self) -> str:
        """A stable hash of the resources (not of formatting or comments): equal configs, equal digests."""
        canonical = {
            f"{kind}/{name}": model.model_dump(mode="json", by_alias=True)
            for (kind, name), model in sorted(self.resources().items())
        }
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()
