"""A checked config: every resource by kind and name, with where it was written."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

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
    # Where a field of the resource was written (``("policies", 0, "type")``): plan annotations point there.
    where: Callable[[Sequence[object]], Location] | None = field(default=None, compare=False, repr=False)

    def locate(self, path: Sequence[object]) -> Location:
        """The position of the value at ``path`` (or of its nearest written ancestor, else the resource)."""
        return self.where(path) if self.where is not None else self.location

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
    # The values files (`--values`) the tree was resolved with: a reload resolves it with the same ones.
    values_files: tuple[Path, ...] = field(default=(), compare=False)

    def resources(self) -> dict[tuple[str, str], BaseModel]:
        """Every resource keyed by (kind, name): what ``plan`` diffs."""
        out: dict[tuple[str, str], BaseModel] = {}
        for group in (self.ports, self.apis, self.applications, self.echo_servers):
            for name, loaded in group.items():
                out[(loaded.model.kind, name)] = loaded.model
        if self.gateway is not None:
            out[("Gateway", self.gateway.model.name)] = self.gateway.model
        return out

    @property
    def settings(self) -> Gateway:
        return self.gateway.model if self.gateway else Gateway(kind="Gateway", name="default")

    def referenced_files(self) -> dict[str, Path]:
        """Files the resources point at (TLS certificates and keys, CA bundles, JWT keys, transform modules kept in
        the config tree), by where they are named."""
        out: dict[str, Path] = {}
        for name, port in self.ports.items():
            tls = port.model.tls
            if tls is not None:
                out[f"Port/{name}/tls.cert"] = port.resolve(tls.cert)
                out[f"Port/{name}/tls.key"] = port.resolve(tls.key)
                for i, sni in enumerate(tls.sni):
                    out[f"Port/{name}/tls.sni[{i}].cert"] = port.resolve(sni.cert)
                    out[f"Port/{name}/tls.sni[{i}].key"] = port.resolve(sni.key)
                if tls.client_certificates is not None:
                    out[f"Port/{name}/tls.client_certificates.ca_file"] = port.resolve(tls.client_certificates.ca_file)
        if self.gateway is not None:
            # The admin's token file and certificate: a reload re-reads them when they change
            # (gateway/operations/admin.py).
            admin, name = self.gateway.model.admin, self.gateway.model.name
            if admin.token_file is not None:
                out[f"Gateway/{name}/admin.token_file"] = self.gateway.resolve(admin.token_file)
            if admin.tls is not None:
                out[f"Gateway/{name}/admin.tls.cert"] = self.gateway.resolve(admin.tls.cert)
                out[f"Gateway/{name}/admin.tls.key"] = self.gateway.resolve(admin.tls.key)
        for name, api in self.apis.items():
            upstream_tls = api.model.upstream.tls
            for attr in ("ca_file", "cert", "key"):
                value = getattr(upstream_tls, attr)
                if value:
                    out[f"API/{name}/upstream.tls.{attr}"] = api.resolve(value)
            for i, policy in enumerate(api.model.policies):
                # The fields of this policy type, looked up in its __dict__: getattr of a name a pydantic model
                # lacks goes through __getattr__ and an exception (a third of this method at 10,000 APIs).
                fields = policy.__dict__
                module = _module_file(fields.get("callable"), (self.root, api.base_dir))
                if module is not None:
                    out[f"API/{name}/policies[{i}].callable"] = module
                jwt = fields.get("jwt")
                for attr in ("jwks_file", "public_key_file"):
                    value = getattr(jwt, attr, None) if jwt is not None else None
                    if value:
                        out[f"API/{name}/policies[{i}].jwt.{attr}"] = api.resolve(value)
        return out

    @functools.cached_property
    def file_fingerprints(self) -> Mapping[str, str]:
        """SHA-256 of each referenced file's content, read once (the loader asks at load time, so the
        fingerprints are those of the files this config was checked with): a renewed certificate or a
        rotated JWKS is a config change."""
        out: dict[str, str] = {}
        for where, path in sorted(self.referenced_files().items()):
            try:
                out[where] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                out[where] = "unreadable"
        return out

    def digest(self) -> str:
        """A stable hash of the resources and the files they name (not of formatting or comments)."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> str:
        # Computed once: a reload compares it, compiles the table with it and reports it (at 1,000 APIs a
        # model dump of every resource takes about 35 ms).
        canonical: dict[str, object] = {
            f"{kind}/{name}": model.model_dump(mode="json", by_alias=True)
            for (kind, name), model in sorted(self.resources().items())
        }
        files = dict(self.file_fingerprints)
        if files:  # configs without referenced files keep the digest they always had
            canonical["files"] = files
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()


def _module_file(spec: object, search: tuple[Path, ...]) -> Path | None:
    """The source file of a ``package.module:function`` callable when it lives in the config tree (operator code
    in git); None for installed packages, which change with a deploy, not a reload."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    relative = Path(*spec.partition(":")[0].split("."))
    for base in search:
        for candidate in (base / relative.with_suffix(".py"), base / relative / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None
