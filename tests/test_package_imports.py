"""The package's shape: no import cycles, light package faces, one version."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import gateway

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pydantic", "jsonschema", "ruamel")


def _modules() -> list[str]:
    names = []
    for package in ("gateway", "echo"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue  # runs the CLI when imported
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module of gateway/ and echo/ imports as the first one loaded, so no import cycle depends on order."""
    # One interpreter, emptied of our packages before each import: an import cycle shows up as the
    # "partially initialized module" ImportError for the module that enters it.
    code = f"""
import importlib, json, sys, traceback
failed = {{}}
for name in {_modules()!r}:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("gateway", "echo")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=3)
print(json.dumps(failed))
"""
    assert json.loads(_run(code)) == {}


def _top_level_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that ``module`` imports when it is loaded (not under TYPE_CHECKING, not inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != module)
    return found


def test_no_import_cycles_among_module_level_imports():
    """The module-level import graph of gateway/ and echo/ has no cycle (type-only imports excluded)."""
    paths = {}
    for package in ("gateway", "echo"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    known = set(paths)
    graph = {name: _top_level_imports(name, path, known) for name, path in paths.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target):] + [name, target] if target in trail else [name, target])
            elif target not in state:
                visit(target, trail + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_the_frame_scanner_loads_no_config_libraries():
    """`import gateway.wire.frames` loads neither pydantic, jsonschema nor ruamel.yaml."""
    code = "import sys, json, gateway.wire.frames; print(json.dumps(sorted(sys.modules)))"
    loaded = {name.split(".")[0] for name in json.loads(_run(code))}
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_operator_names_still_import_from_the_package():
    """The names transform modules import (`from gateway import DROP, TransformContext`) resolve on first use."""
    from gateway import DROP, TransformContext
    from gateway.policies.base import DROP as BASE_DROP

    assert DROP is BASE_DROP
    assert TransformContext.__name__ == "TransformContext"


def test_the_version_has_one_home():
    """The installed distribution's version is `gateway.__version__`, which pyproject reads."""
    from importlib.metadata import version

    assert version("wsgate") == gateway.__version__


def test_wsgate_version_prints_the_package_version(capsys):
    """`wsgate --version` prints `wsgate <version>` and exits 0."""
    from gateway.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"wsgate {gateway.__version__}"
