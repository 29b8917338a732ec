"""The layers of gateway/: import-linter's contracts hold, and no function-level import of our own modules hides a
cycle outside the places allowed to load lazily."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (file, module it may import inside a function): why it loads lazily.
LAZY_ALLOWED = {
    ("gateway/__init__.py", "gateway.policies.base"): "operators' names (`from gateway import DROP`), on first use",
    ("gateway/__init__.py", "gateway.policies.transform"): "operators' names, resolved on first use",
    ("gateway/state/__init__.py", "gateway.state.redis"): "optional dependency: redis only for `backend: redis`",
    ("gateway/build/apps.py", "gateway.build.jwt_keys"): "PyJWT and cryptography (~0.1 s) only for JWT configs",
    ("gateway/policies/identify.py", "gateway.build.jwt_keys"): "PyJWT and cryptography only for JWT configs",
    ("gateway/config/rules/api_jwt.py", "gateway.build.jwt_keys"): "PyJWT and cryptography only for JWT configs",
    ("gateway/config/rules/api_messages.py", "gateway.config.message_schemas"):
        "jsonschema's validators only for configs with message schemas (jsonschema-rs decides the rest)",
}
# Files where any function-level import of ours is allowed: the CLI loads only the command it runs.
LAZY_FILES = {"gateway/cli.py"}


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def function_level_imports(base: Path = ROOT) -> set[tuple[str, str]]:
    """(file, our module) for every import of a gateway module inside a function body under ``base``/gateway."""
    found: set[tuple[str, str]] = set()
    for path in sorted((base / "gateway").rglob("*.py")):
        relative = path.relative_to(base).as_posix()
        parts = path.relative_to(base).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom):
                    target = _absolute(module, is_package, node)
                    names = [target] if target != "gateway" else [f"gateway.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    if name == "gateway" or name.startswith("gateway."):
                        found.add((relative, name))
    return found


def test_no_function_level_imports_of_our_modules_outside_the_allowed_seams():
    """Every function-level import of a gateway module is in the CLI or a named lazy seam: elsewhere it is a cycle
    looking for a seam (STYLE.md)."""
    found = function_level_imports()
    unexplained = sorted(
        (file, name) for file, name in found
        if file not in LAZY_FILES and (file, name) not in LAZY_ALLOWED
    )
    assert unexplained == []
    assert sorted(set(LAZY_ALLOWED) - found) == []  # an allowance nothing uses any more goes


def test_the_scan_finds_a_function_level_import(tmp_path):
    """The scan sees relative and absolute imports of ours inside (async) functions, and ignores module-level ones."""
    package = tmp_path / "gateway" / "part"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(
        "from ..config import models\n"
        "def f():\n    from ..build import routes\n"
        "async def g():\n    import gateway.edge.listener\n"
        "class C:\n    def h(self):\n        from . import other\n"
    )
    found = function_level_imports(tmp_path)
    assert found == {("gateway/part/mod.py", "gateway.build"), ("gateway/part/mod.py", "gateway.edge.listener"),
                     ("gateway/part/mod.py", "gateway.part")}


@pytest.mark.skipif(importlib.util.find_spec("importlinter") is None, reason="import-linter is not installed")
def test_the_import_contracts_hold():
    """`lint-imports` keeps every contract in pyproject.toml (the layers, no cycles, the forbidden imports)."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert command is not None
    done = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
