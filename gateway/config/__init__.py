"""Load and check a config tree: YAML files -> Config, or diagnostics.

PROVISIONAL minimal implementation (no positions, first error wins); the
config work replaces the internals and keeps the signature of :func:`check`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pydantic import TypeAdapter, ValidationError
from ruamel.yaml import YAML

from .models import Resource
from .tree import Config, Loaded, Location

_resource = TypeAdapter(Resource)


@dataclass
class CheckResult:
    config: Config | None
    diagnostics: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.config is not None


def check(paths: Sequence[str | Path], *, env: Mapping[str, str] | None = None) -> CheckResult:
    env = os.environ if env is None else env
    files: list[Path] = []
    roots = [Path(p) for p in paths] or [Path(".")]
    for root in roots:
        if root.is_dir():
            files += sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            files.append(root)
    groups: dict[str, dict] = {"Port": {}, "API": {}, "Application": {}, "EchoServer": {}, "Gateway": {}}
    yaml = YAML(typ="safe")
    errors = []
    for file in files:
        for doc in yaml.load_all(file.read_text()):
            if doc is None:
                continue
            try:
                model = _resource.validate_python(doc)
            except ValidationError as exc:
                errors.append(f"{file}: {exc}")
                continue
            groups[model.kind][model.name] = Loaded(model, Location(str(file), 1, 1), file.parent)
    if errors:
        return CheckResult(None, errors)
    gateways = list(groups["Gateway"].values())
    config = Config(
        root=roots[0],
        ports=groups["Port"],
        apis=groups["API"],
        applications=groups["Application"],
        echo_servers=groups["EchoServer"],
        gateway=gateways[0] if gateways else None,
    )
    return CheckResult(config, [])
