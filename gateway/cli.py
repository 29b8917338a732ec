"""The ``wsgate`` command line: the only place that prints and chooses exit codes.

    wsgate validate [PATH...] [--format text|json|github] [--strict] [--probe]   0 valid, 1 invalid or usage error
    wsgate plan [PATH] --from OTHER [--format text|json|github] [--probe]  0 no changes, 2 changes, 1 error
    wsgate schemas [--check] [--dir DIR] [--docs DIR]                  schemas and docs/reference.md; 1 stale
    wsgate import FILE [--name N] [--upstream URL] [-o F]              an AsyncAPI description as an API; 1 error
    wsgate run [PATH] [--log-format ...] [--admin HOST:PORT] [--workers N|auto]   the gateway (and echo servers)
    wsgate echo [PATH]                                                 only the config's echo servers
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from . import __version__
from .build.pipeline import Built, build
from .config import CheckCache, CheckResult, Config
from .config import diagnostics as diag
from .config import schema as schemas
from .config import selector as selection
from .config.models import API_VERSION

# Terraform's -detailed-exitcode: 0 nothing to do, 1 an error (a usage error too), 2 plan has changes.
EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 1
EXIT_PLAN_CHANGES = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors by exception instead of exiting the process."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message}", self.format_usage())


class _UsageError(Exception):
    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


def _address(text: str) -> str:
    if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}", text) or int(text.rsplit(":", 1)[1]) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def _probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probe", action="store_true",
                   help="also open a WebSocket handshake to every upstream URL (opt-in: needs the backends)")
    p.add_argument("--probe-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long each probe may take (default: 5; all run at once)")


def _selector_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--selector", action="append", default=[], metavar="KEY=VALUE",
                   help="only resources whose labels hold these pairs (team=payments; comma-separated or repeated)")


def _values_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--values", action="append", default=[], metavar="FILE",
                   help="an environment's values for `{value: NAME}` in the tree (repeatable; later files win; "
                        "WSGATE_VALUE_NAME in the environment wins over both)")


def _workers(text: str) -> int:
    from .workers.supervisor import worker_count

    try:
        return worker_count(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wsgate", description="A declarative, GitOps-style WebSocket API gateway.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("validate", help="check a config tree and report every problem")
    p.add_argument("paths", nargs="*", metavar="PATH", default=["."], help="config directories or files (default: .)")
    p.add_argument("--format", choices=("text", "json", "github"), default="text")
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    p.add_argument("--import-transforms", action="store_true",
                   help="import transform modules to check them (runs their code; default: a static check)")
    _probe_arguments(p)
    _values_argument(p)
    _selector_argument(p)

    p = sub.add_parser("plan", help="show what changes between a config and another version of it")
    p.add_argument("path", nargs="?", default=".", metavar="PATH", help="the desired config (default: .)")
    p.add_argument(
        "--from", dest="sources", required=True, metavar="OTHER", action="append",
        help="the current config: a directory, a git revision of the repository holding PATH, "
        "or a running gateway's admin address (http://HOST:PORT); repeat with several admin addresses to "
        "compare a fleet with the tree and with each other",
    )
    p.add_argument("--format", choices=("text", "json", "github"), default="text",
                   help="github: the text plan, plus an annotation on each line that disturbs live connections")
    _probe_arguments(p)
    _values_argument(p)
    _selector_argument(p)

    p = sub.add_parser("schemas", help="regenerate the JSON Schemas in schemas/ from the models")
    p.add_argument("--check", action="store_true", help="fail if the committed schemas are stale; write nothing")
    p.add_argument("--dir", type=Path, default=None, help="schema directory (default: the checkout's schemas/)")
    p.add_argument("--docs", type=Path, default=None,
                   help="where the field reference reference.md goes (default: the checkout's docs/)")

    p = sub.add_parser("run", help="check the config, then serve it")
    p.add_argument("path", nargs="?", default=".", metavar="PATH")
    p.add_argument("--log-format", choices=("json", "console", "auto"), default=None)
    p.add_argument("--admin", type=_address, default=None, metavar="HOST:PORT", help="admin endpoint address")
    _values_argument(p)
    p.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                   help="worker processes serving every port (auto: one per CPU core; default 1: no supervisor)")

    p = sub.add_parser("import", help="turn an AsyncAPI 2.x/3.x description into an API resource")
    p.add_argument("description", type=Path, metavar="FILE", help="the AsyncAPI document (YAML or JSON)")
    p.add_argument("--name", help="API name (default: from info.title)")
    p.add_argument("--path", help="gateway path (default: /websocket/NAME/VERSION)")
    p.add_argument("--port", default="default", help="the Port the API is served on (default: default)")
    p.add_argument("--upstream", help="native endpoint URL (default: the description's ws/wss server)")
    p.add_argument("-o", "--output", type=Path, help="write the YAML here instead of stdout")

    p = sub.add_parser("export", help="describe an API for its clients (AsyncAPI 3.0), or dump a live gateway's "
                                      "config as YAML (config --from URL)")
    p.add_argument("format", choices=("asyncapi", "config"), help="asyncapi: an API's description; config: what a "
                   "running gateway serves, as a config tree (secrets as references or placeholders, never values)")
    p.add_argument("api", metavar="API_NAME", nargs="?", help="the API to describe (asyncapi)")
    p.add_argument("--from", dest="source", metavar="URL", help="config: the gateway's admin address (http://HOST:PORT)")
    p.add_argument("--config", default=".", metavar="PATH", help="the config tree (default: .)")
    p.add_argument("--version", help="the document's info.version (default: the API's version)")
    p.add_argument("--host", help="the host name clients use (default: each Port's bind address)")
    p.add_argument("-o", "--output", type=Path, help="write here instead of stdout (.json: JSON, else YAML)")

    p = sub.add_parser("echo", help="check the config, then serve only its echo servers")
    p.add_argument("path", nargs="?", default=".", metavar="PATH")
    _values_argument(p)
    p.add_argument("--log-format", choices=("json", "console", "auto"), default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        sys.stderr.write(exc.usage + str(exc) + "\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    handlers = {"validate": cmd_validate, "plan": cmd_plan, "schemas": cmd_schemas, "run": cmd_run, "echo": cmd_echo,
                "import": cmd_import, "export": cmd_export}
    return handlers[args.command](args)


# --------------------------------------------------------------- validate


def _report(result: CheckResult, fmt: str, out: TextIO) -> None:
    out.write(diag.render(result.diagnostics, fmt))
    if fmt == "text":
        n_files = len(result.files)
        verdict = "invalid" if any(d.is_error for d in result.diagnostics) else "valid"
        if result.foreign:
            count = sum(result.foreign.values())
            formats = ", ".join(sorted(result.foreign))
            out.write(f"note: {count} document{'s' if count != 1 else ''} of other formats skipped (apiVersion "
                      f"{formats}); list such files in .wsgateignore to skip them silently\n")
        if result.values is not None and result.values.files:
            out.write(f"note: {_values_line(result)}\n")
        if result.unversioned:
            count = result.unversioned
            out.write(f"note: {count} document{'s' if count != 1 else ''} without apiVersion, read as "
                      f"{API_VERSION} (add `apiVersion: {API_VERSION}` to pin the format; docs/config-versions.md)\n")
        files = f"{n_files} file{'s' if n_files != 1 else ''}"
        out.write(f"{verdict}: {diag.summary_line(result.diagnostics)} in {files}\n")


def _values_line(result: CheckResult) -> str:
    """Which values the tree was resolved with (they are settings, never secrets: those stay `{env: ...}`)."""
    assert result.values is not None
    files = ", ".join(str(f) for f in result.values.files)
    used = sorted(result.values.used)
    return f"values from {files}" + (f": {', '.join(used)}" if used else "")


def _probe(result: CheckResult, paths: Sequence[str], timeout: float, fmt: str, out: TextIO) -> CheckResult:
    """``--probe``: handshake with every upstream of a valid config; failures join the diagnostics (WSG150), and
    in text each 101 is listed too, so the report says what every URL answered."""
    import asyncio

    from .edge.probe import probe_config, probe_diagnostics

    if result.config is None:
        return result
    probes = asyncio.run(probe_config(result.config, paths, timeout))
    if fmt == "text":
        for p in probes:
            if p.result.ok:
                where = f"{p.location}: " if p.location else ""
                out.write(f"{where}probe {p.url}: {p.result.detail}\n")
    failed = probe_diagnostics(probes)
    if not failed:
        return result
    diagnostics = sorted([*result.diagnostics, *failed], key=diag.Diagnostic.sort_key)
    return CheckResult(None, diagnostics, result.files)


def cmd_validate(args: argparse.Namespace) -> int:
    result: CheckResult = build(args.paths, import_transforms=args.import_transforms, values=args.values)
    if args.probe:
        result = _probe(result, args.paths, args.probe_timeout, args.format, sys.stdout)
    if args.selector:
        try:
            selector = selection.parse(args.selector)
        except ValueError as exc:
            sys.stderr.write(f"wsgate validate: {exc}\n")
            return EXIT_USAGE
        kept, selected = selection.diagnostics_of_selected(result.diagnostics, result.documents, selector)
        if args.format == "text":
            sys.stdout.write(f"note: --selector {', '.join(f'{k}={v}' for k, v in selector.items())}: {selected} of "
                             f"{len(result.documents)} documents; {len(result.diagnostics) - len(kept)} problems "
                             "outside them not shown\n")
        result = dataclasses.replace(result, diagnostics=kept)
        _report(result, args.format, sys.stdout)
        if any(d.is_error for d in kept):
            return EXIT_INVALID
        return EXIT_INVALID if args.strict and result.warnings else EXIT_OK
    _report(result, args.format, sys.stdout)
    if not result.ok:
        return EXIT_INVALID
    if args.strict and result.warnings:
        return EXIT_INVALID
    return EXIT_OK


# ------------------------------------------------------------------- plan


def _git(cwd: Path, *argv: str, binary: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=not binary, check=False)


def _checkout_revision(path: Path, revision: str, into: Path) -> Path | None:
    """Extract ``path`` as it was at ``revision`` into ``into``; None when it did not exist then.

    Raises ``LookupError`` when ``path`` is not in a git repository or the revision is unknown.
    """
    where = path if path.is_dir() else path.parent
    top = _git(where, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise LookupError(f"{revision!r} is not a directory, and {path} is not inside a git repository")
    repo = Path(top.stdout.strip())
    verify = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if verify.returncode != 0:
        raise LookupError(f"{revision!r} is neither a directory nor a git revision of {repo}")
    commit = verify.stdout.strip()
    relative = path.resolve().relative_to(repo.resolve()).as_posix()
    listing = _git(repo, "ls-tree", "--name-only", commit, "--", relative or ".")
    if relative not in ("", ".") and not listing.stdout.strip():
        return None
    archive = _git(repo, "archive", "--format=tar", commit, "--", relative or ".", binary=True)
    if archive.returncode != 0:
        raise LookupError(f"git archive failed: {archive.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / relative if relative not in ("", ".") else into


def cmd_plan(args: argparse.Namespace) -> int:
    from .changes.plan import diff, render

    try:
        selection.parse(args.selector)
    except ValueError as exc:
        sys.stderr.write(f"wsgate plan: {exc}\n")
        return EXIT_USAGE
    desired: CheckResult = build([args.path], values=args.values)
    if not desired.ok:
        sys.stderr.write(diag.render(desired.diagnostics, "text"))
        sys.stderr.write(f"wsgate plan: the desired config {args.path} is invalid; nothing planned\n")
        return EXIT_INVALID
    if args.probe:
        desired = _probe(desired, [args.path], args.probe_timeout, "text", sys.stderr)
        if not desired.ok:
            sys.stderr.write(diag.render(desired.errors, "text"))
            sys.stderr.write(f"wsgate plan: an upstream of {args.path} failed its probe; nothing planned\n")
            return EXIT_INVALID
    assert desired.config is not None  # desired.ok
    if len(args.sources) > 1:
        if not all(s.startswith(("http://", "https://")) for s in args.sources):
            sys.stderr.write("wsgate plan: several --from must all be running gateways (http://HOST:PORT)\n")
            return EXIT_USAGE
        return _plan_fleet(args, desired.config)
    args.source = args.sources[0]
    if args.source.startswith(("http://", "https://")):
        return _plan_from_live(args, desired.config)
    source = Path(args.source)
    tmp: str | None = None
    try:
        if source.is_dir():
            current_path: Path | None = source
            label = str(source)
        else:
            tmp = tempfile.mkdtemp(prefix="wsgate-plan-")
            try:
                current_path = _checkout_revision(Path(args.path), args.source, Path(tmp))
            except LookupError as exc:
                sys.stderr.write(f"wsgate plan: {exc}\n")
                return EXIT_INVALID
            label = f"{args.source}:{args.path}"
        current = None
        if current_path is not None:
            result = build([current_path], values=args.values)  # the same environment on both sides
            if not result.ok:
                sys.stderr.write(diag.render(result.diagnostics, "text"))
                sys.stderr.write(f"wsgate plan: the current config ({label}) is invalid; cannot diff against it\n")
                return EXIT_INVALID
            current = result.config
        target = desired.config
        if args.selector:  # only the resources the selector picks, on both sides
            picked = selection.parse(args.selector)
            target = selection.selected_config(target, picked)
            current = selection.selected_config(current, picked) if current is not None else None
        if current is not None and _has_placeholders(current):
            # An exported tree (`export config`): its credentials are redacted placeholders; compare in that form.
            from .operations.live import redacted_credentials

            target = redacted_credentials(target)
        plan = diff(current, target)
        if args.format == "text" and args.values:
            sys.stdout.write(f"Resolved with {_values_line(desired)}\n\n")
        sys.stdout.write(render(plan, args.format))
        return EXIT_OK if plan.empty else EXIT_PLAN_CHANGES
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _has_placeholders(config: Config) -> bool:
    from .common.redaction import CREDENTIAL_PLACEHOLDER

    for loaded in config.applications.values():
        ids = loaded.model.identifiers
        written = [*ids.api_keys, *(user.password for user in ids.basic)]
        if any(isinstance(w, str) and w.startswith(CREDENTIAL_PLACEHOLDER) for w in written):
            return True
    return False


def _plan_fleet(args: argparse.Namespace, desired: Config) -> int:
    """Several live gateways: which serve the tree's config, which differ (and from whom), and why a reload
    failed where one did; then the plan from each distinct config that differs from the tree."""
    from .operations.live import fetch_json

    want = desired.digest()
    rows: list[tuple[str, dict[str, Any] | None, str]] = []
    for source in args.sources:
        try:
            served = fetch_json(source, "/reload").get("config") or {}
            served.setdefault("digest", fetch_json(source, "/config").get("digest"))
            rows.append((source, served, ""))
        except (OSError, ValueError) as exc:
            rows.append((source, None, str(exc)))
    groups: dict[str, list[str]] = {}
    for source, served, _ in rows:
        if served is not None:
            groups.setdefault(str(served.get("digest")), []).append(source)
    out = sys.stdout
    out.write(f"Fleet: {len(rows)} gateways; the tree's config is {want[:19]}\n\n")
    differ = 0
    for source, served, problem in rows:
        if served is None:
            out.write(f"  ? {source}: unreachable ({problem})\n")
            differ += 1
            continue
        digest = str(served.get("digest"))
        same = [s for s in groups[digest] if s != source]
        mark = "=" if digest == want else "~"
        differ += digest != want
        commit = served.get("commit")
        line = (f"  {mark} {source}: {digest[:19]} generation {served.get('generation')}"
                + (f", commit {str(commit)[:12]}" if commit else "")
                + (" (the tree's config)" if digest == want else " (differs from the tree)")
                + (f", as {', '.join(same)}" if same else ", unlike every other" if len(rows) > 1 else ""))
        out.write(line + "\n")
        last = served.get("last_reload") or {}
        if last and not last.get("ok", True):
            out.write(f"      last reload failed: {last.get('error')}\n")
    out.write(f"\n{len(rows) - differ} of {len(rows)} serve the tree's config; "
              f"{len(groups)} distinct config{'s' if len(groups) != 1 else ''} in the fleet.\n")
    status = EXIT_OK
    for digest, sources in sorted(groups.items()):
        if digest == want:
            continue
        out.write(f"\n# Plan for {', '.join(sources)}\n")
        args.source = sources[0]
        status = max(status, _plan_from_live(args, desired))
    if any(served is None for _, served, _ in rows):
        return EXIT_INVALID
    return EXIT_PLAN_CHANGES if differ else status


def _plan_from_live(args: argparse.Namespace, desired: Config) -> int:
    """Diff against what a running gateway serves; each disruption shows the live connections it closes."""
    from .changes.plan import diff, render
    from .operations.live import (
        config_from_documents,
        drift_of,
        ended_first,
        fetch_json,
        live_counter,
        redacted_credentials,
    )

    try:
        loaded = fetch_json(args.source, "/config")
        counts = fetch_json(args.source, "/connections")
        current = config_from_documents(loaded["documents"], f"{args.source}/config")
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"wsgate plan: cannot read the running config from {args.source}: {exc}\n")
        return EXIT_INVALID
    from .build.apps import AppIndex
    from .changes.impact import Impact

    desired_apps = AppIndex.build(desired)  # from the tree as written: the credential entries' fingerprints
    desired = redacted_credentials(desired)
    if getattr(args, "selector", None):  # only the resources the selector picks, on both sides
        picked = selection.parse(args.selector)
        desired, current = selection.selected_config(desired, picked), selection.selected_config(current, picked)
    impact = Impact(current, desired, desired_apps)  # the disruptions, worked out once for the diff and the counts
    plan = diff(current, desired, found=impact.all).with_live_counts(live_counter(counts, impact),
                                                                     ended_first(counts, impact))
    plan = dataclasses.replace(plan, old_digest=loaded.get("digest"), new_digest=desired.digest(),
                               drift=drift_of(loaded))
    sys.stdout.write(render(plan, args.format))
    return EXIT_OK if plan.empty else EXIT_PLAN_CHANGES


# ---------------------------------------------------------------- schemas


def cmd_schemas(args: argparse.Namespace) -> int:
    from .config import reference

    directory = args.dir or schemas.default_directory()
    docs = args.docs or reference.default_directory()
    if args.check:
        stale = schemas.stale(directory)
        if reference.is_stale(docs):
            stale.append(str(docs / reference.FILE_NAME))
        if stale:
            sys.stderr.write(
                f"stale schemas in {directory}: {', '.join(stale)}\nrun `wsgate schemas` to regenerate them\n"
            )
            return EXIT_INVALID
        sys.stdout.write(f"schemas in {directory} and {docs / reference.FILE_NAME} are up to date\n")
        return EXIT_OK
    changed = schemas.write(directory)
    written = reference.write(docs)
    if written is not None:
        changed.append(written)
    for path in changed:
        sys.stdout.write(f"wrote {path}\n")
    if not changed:
        sys.stdout.write(f"schemas in {directory} and {docs / reference.FILE_NAME} are up to date\n")
    return EXIT_OK


# ---------------------------------------------------------------- import


def cmd_import(args: argparse.Namespace) -> int:
    from .asyncapi.importer import (
        DescriptionError,
        api_from_asyncapi,
        read_description,
        render_yaml,
        unresolved_references,
    )

    try:
        description = read_description(args.description)
        api = api_from_asyncapi(description.data, name=args.name, path=args.path, port=args.port,
                                upstream=args.upstream)
    except DescriptionError as exc:
        sys.stderr.write(diag.render_text(exc.diagnostics))
        sys.stderr.write(f"wsgate import: {exc}\n")
        return EXIT_INVALID
    sys.stderr.write(diag.render_text(unresolved_references(description)))
    text = render_yaml(api, args.description.name)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {args.output}: API {api.name} with {len(api.messages)} message definition(s); "
                         "add its policy chain, then `wsgate validate`\n")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .asyncapi.exporter import ExportError, asyncapi_document, render

    if args.format == "config":
        return _export_config(args)
    if args.api is None:
        sys.stderr.write("wsgate export asyncapi: name the API to describe\n")
        return EXIT_USAGE

    result = _checked_or_report(args.config)
    if not result.ok or result.config is None:
        return EXIT_INVALID
    try:
        document = asyncapi_document(result.config, args.api, version=args.version, host=args.host)
    except ExportError as exc:
        sys.stderr.write(f"wsgate export: {exc}\n")
        return EXIT_INVALID
    json_out = args.output is not None and args.output.suffix == ".json"
    text = render(document, "json" if json_out else "yaml")
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {args.output}: AsyncAPI {document['asyncapi']} for API {args.api}\n")
    return EXIT_OK


def _export_config(args: argparse.Namespace) -> int:
    from .operations.export import export_documents
    from .operations.live import fetch_json

    if not args.source or not args.source.startswith(("http://", "https://")):
        sys.stderr.write("wsgate export config: give the gateway's admin address with --from http://HOST:PORT\n")
        return EXIT_USAGE
    try:
        served = fetch_json(args.source, "/config")
        text = export_documents(served["documents"], args.source, str(served.get("digest")))
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"wsgate export config: cannot read the running config from {args.source}: {exc}\n")
        return EXIT_INVALID
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {args.output}: {len(served['documents'])} resources served by {args.source}\n")
    return EXIT_OK


# ------------------------------------------------------------ run, echo


def _checked_or_report(path: str, cache: CheckCache | None = None, values: Sequence[str] = ()) -> Built:
    """The same build and diagnostics as ``validate`` (transforms imported: they are about to run); printed to
    stderr (stdout may carry logs)."""
    result = build([path], cache=cache, import_transforms=True, values=values)
    if result.diagnostics:
        _report(result, "text", sys.stderr)
    return result


def cmd_run(args: argparse.Namespace) -> int:
    cache = CheckCache()  # the gateway's first reload then re-reads only the files changed since start
    result = _checked_or_report(args.path, cache, args.values)
    if not result.ok:
        return EXIT_INVALID
    if args.log_format is not None:
        from .common.log import configure_logging

        configure_logging(args.log_format)
    if args.workers > 1:
        from .workers import supervisor

        assert result.config is not None
        return supervisor.run(result.config, args.workers, args, check_cache=cache)
    from .operations import admin
    from .serving import runtime

    assert result.config is not None  # result.ok
    return runtime.run(result.config, args, check_cache=cache, artefacts=result.artefacts,
                       admin_server=admin.admin_server)


def cmd_echo(args: argparse.Namespace) -> int:
    result = _checked_or_report(args.path, values=args.values)
    if not result.ok:
        return EXIT_INVALID
    from .common.log import configure_logging

    assert result.config is not None  # result.ok
    configure_logging(args.log_format or result.config.settings.log_format)
    from echo import server

    return server.run(result.config, args)
