"""API rules about transform policies: the callable each names exists and takes one argument."""

from __future__ import annotations

import ast
import contextlib
import importlib
import sys
from pathlib import Path
from typing import Any

from ..diagnostics import error
from ..document_checks import did_you_mean
from .base import Entry, RuleContext, refused, rule


def _config_root_for(ctx: RuleContext, e: Entry) -> Path:
    declaring = Path(e.doc.file).resolve()
    for root in ctx.roots:
        r = root.resolve()
        if r == declaring.parent or r in declaring.parents:
            return r
    return ctx.roots[0].resolve() if ctx.roots else declaring.parent


def check_callable(spec: str, root: Path) -> tuple[str, str] | None:
    """Import ``package.module:function`` with ``root`` on sys.path: None if fine, else (summary, hint).

    The import is isolated: modules loaded from ``root`` are removed again and
    a same-named module loaded from elsewhere is put back, so checking one
    config never changes what another config (or the runtime) imports.
    """
    module_name, _, attr_path = spec.partition(":")
    top = module_name.split(".")[0]
    # Only a module that lives under the root is isolated; `json:loads` or an installed package
    # imports as usual, so checking never reloads modules the running process already uses.
    local = (root / f"{top}.py").is_file() or (root / top).is_dir()
    # Every module of that name is set aside while checking, the running gateway's own copy included: the
    # check must see the file as it is now (an edited transform), not as the runtime imported it.
    foreign = {n: m for n, m in sys.modules.items() if local and (n == top or n.startswith(top + "."))}
    for n in foreign:
        del sys.modules[n]
    before = set(sys.modules)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    result: tuple[str, str] | None
    try:
        module = importlib.import_module(module_name)
        target: Any = module
        for part in attr_path.split("."):
            if not hasattr(target, part):
                names = [n for n in dir(target) if not n.startswith("_")]
                best = did_you_mean(part, names)
                raise _Missing(part, f"did you mean '{best}'?" if best else "")
            target = getattr(target, part)
        if not callable(target):
            result = (f"{spec} is not callable (it is {type(target).__name__})", "point at a function")
        else:
            result = None
    except _Missing as exc:
        result = (f"module '{module_name}' has no attribute '{exc.args[0]}'", exc.args[1] or "check the function name")
    except ModuleNotFoundError as exc:
        result = (
            f"cannot import module '{module_name}': no module named '{exc.name}'",
            f"the module must be importable with the config directory {root} on sys.path",
        )
    except BaseException as exc:  # operator code may raise anything on import; report, never crash
        if isinstance(exc, KeyboardInterrupt):
            raise
        result = (f"importing '{module_name}' raised {type(exc).__name__}: {exc}",
                  "fix the module so it imports cleanly")
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))
        for n in set(sys.modules) - before:
            if (local and (n == top or n.startswith(top + "."))) or _under(
                getattr(sys.modules.get(n), "__file__", None), root
            ):
                sys.modules.pop(n, None)
        sys.modules.update(foreign)
    return result


class _Missing(Exception):
    pass


def _under(file: str | None, root: Path) -> bool:
    if not file:
        return False
    try:
        Path(file).resolve().relative_to(root)
        return True
    except ValueError:
        return False


def transform_module_file(spec: str, root: Path) -> Path | None:
    """The file in the config tree ``root`` that holds ``package.module:function``'s module, if there is one."""
    relative = Path(*spec.partition(":")[0].split("."))
    candidates = (root / relative.with_suffix(".py"), root / relative / "__init__.py")
    return next((c for c in candidates if c.is_file()), None)


def static_callable_problem(spec: str, root: Path) -> tuple[str, str] | None:
    """Check ``package.module:function`` without running it: None if fine, else (summary, hint).

    The module must be a file under ``root`` (the config tree) that parses and defines ``function`` at
    its top level as a function that can be called with one argument (the message).
    """
    module_name, _, attr = spec.partition(":")
    path = transform_module_file(spec, root)
    opt_in = "or run `wsgate validate --import-transforms` to import it (that runs its code)"
    if path is None:
        return (f"module '{module_name}' is not a file in the config tree {root}",
                f"keep transform modules in the config tree (checked without running them), {opt_in}")
    if "." in attr:
        return (f"{spec}: only a top-level function can be checked without importing", opt_in)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        return (f"module '{module_name}' does not parse: {getattr(exc, 'msg', exc)}"
                + (f" ({path.name}, line {line})" if line else ""), "fix the module's syntax")
    except OSError as exc:
        return (f"module '{module_name}' cannot be read: {exc.strerror or exc}", "make the file readable")
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    node = functions.get(attr)
    if node is None:
        defined = sorted(functions)
        best = did_you_mean(attr, defined)
        return (f"module '{module_name}' defines no function '{attr}'",
                f"did you mean '{best}'?" if best else f"define `def {attr}(message):` at the module's top level")
    args = node.args
    positional = args.posonlyargs + args.args
    required = len(positional) - len(args.defaults)
    required_kw = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    if required > 1 or required_kw or (not positional and args.vararg is None):
        return (f"{spec} must take exactly one argument (the message); it takes "
                f"{ast.unparse(args) or 'none'}", f"define it as `def {attr}(message):`")
    return None


@rule
def transform_callables(ctx: RuleContext) -> None:
    # Cached per run only: a reload after the operator fixes the module must check it afresh.
    seen: dict[tuple[Path, str], tuple[str, str] | None] = {}
    check = check_callable if ctx.import_transforms else static_callable_problem
    for e in ctx.of("API"):
        for i, p in enumerate(e.model.policies):
            if p.type != "transform":
                continue
            key = (_config_root_for(ctx, e), p.callable)
            module = transform_module_file(p.callable, key[0])
            if module is not None and refused(ctx, e, ("policies", i, "callable"), module):
                continue
            if key not in seen:
                seen[key] = check(p.callable, key[0])
            problem = seen[key]
            if problem is not None:
                at = e.doc.value_at(("policies", i, "callable"))
                ctx.out.append(error("WSG117", problem[0], at, hint=problem[1]))
