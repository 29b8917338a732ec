"""Property (issue 21): over generated config trees holding links in and out of the tree, special files and
hostile contents, validate and plan never print a byte of a file outside the tree."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from gateway_process import gateway_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import PORT, TIMEOUT, api_yaml

from gateway.cli import main

# Every byte outside the tree carries it: a leak of any outside file shows as this string in an output.
MARKER = f"outside-marker-{uuid.uuid4().hex}"

GOOD = PORT + api_yaml("Echo", "/echo", "ws://127.0.0.1:9/echo/")

# Contents of files outside the tree: each holds the marker where a diagnostic could quote it.
OUTSIDE = {
    "yaml": f"kind: API\nname: {MARKER}\npath: /{MARKER}\n".encode(),
    "first-line": f"{MARKER}: [\n".encode(),
    "huge-line": (f"kind: Port\nname: {MARKER}" + "x" * 300_000 + "\n").encode(),
    "not-utf8": b"kind: Port\nname: \xff\xfe" + MARKER.encode() + b"\n",
    "nul": f"kind: Port\x00{MARKER}\n".encode(),
    "pem": f"-----BEGIN PUBLIC KEY-----\n{MARKER}\n-----END PUBLIC KEY-----\n".encode(),
}

# Contents of files inside the tree (may be quoted, hold no marker) and what else a tree entry may be.
INSIDE = {
    "good": GOOD.encode(),
    "port": b"kind: Port\nname: second\nport: 0\nhost: 127.0.0.1\n",
    "broken": b"kind: Port\nname: [\n",
    "huge-line": b"kind: Port\nname: p\nport: " + b"9" * 250_000 + b"\n",
    "not-utf8": b"kind: Port\nname: \xff\n",
    "nul": b"kind: Port\x00\n",
    "tabs": b"kind: Port\n\tname: t\n",
}
SPECIAL = ("fifo", "dir", "proc-environ", "dangling")

entry = st.one_of(
    st.tuples(st.just("file"), st.sampled_from(sorted(INSIDE))),
    st.tuples(st.just("link-out"), st.sampled_from(sorted(OUTSIDE))),
    st.tuples(st.just("link-in"), st.sampled_from(sorted(INSIDE))),
    st.tuples(st.just("special"), st.sampled_from(SPECIAL)),
    st.tuples(st.just("named-link-out"), st.sampled_from(sorted(OUTSIDE))),
)
trees = st.lists(entry, min_size=1, max_size=6)


def build_tree(base: Path, entries: list[tuple[str, str]]) -> Path:
    """The tree under ``base/config``; outside files under ``base/outside``."""
    root, outside = base / "config", base / "outside"
    root.mkdir()
    outside.mkdir()
    populate(root, outside, entries)
    return root


def populate(root: Path, outside: Path, entries: list[tuple[str, str]]) -> None:
    """Write ``entries`` into the tree ``root`` (emptied first), their outside files into ``outside``."""
    for path in [*root.iterdir(), *outside.iterdir()]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    (root / "sub").mkdir()
    (root / "gateway.yaml").write_text(GOOD)
    for i, (what, which) in enumerate(entries):
        name = root / ("sub" if i % 2 else ".") / f"e{i}.yaml"
        if what == "file":
            name.write_bytes(INSIDE[which])
        elif what == "link-out":
            target = outside / f"{i}-{which}.yaml"
            target.write_bytes(OUTSIDE[which])
            name.symlink_to(target)
        elif what == "link-in":
            target = root / f"target-{i}.yml.txt"  # not a YAML name: read only through the link
            target.write_bytes(INSIDE[which])
            name.symlink_to(os.path.relpath(target, name.parent))
        elif what == "named-link-out":
            # A Gateway naming its token file, a Port its certificate: both links out of the tree.
            target = outside / f"{i}-{which}.pem"
            target.write_bytes(OUTSIDE[which])
            (root / f"named-{i}.pem").symlink_to(target)
            name.write_text(f"kind: Port\nname: tls{i}\nport: 0\nhost: 127.0.0.1\ntls:\n  cert: ../named-{i}.pem\n"
                            f"  key: {'../' if i % 2 else ''}named-{i}.pem\n"
                            if i % 2 else
                            f"kind: Port\nname: tls{i}\nport: 0\nhost: 127.0.0.1\ntls:\n  cert: named-{i}.pem\n"
                            f"  key: named-{i}.pem\n")
        elif which == "fifo":
            os.mkfifo(name)
        elif which == "dir":
            name.mkdir()
            (name / "inner.yaml").write_bytes(INSIDE["port"])
        elif which == "proc-environ":
            name.symlink_to("/proc/self/environ")
        else:
            name.symlink_to(outside / "missing.yaml")


def run_cli(*args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        main(list(args))
    return out.getvalue() + err.getvalue()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_validate_and_plan_never_print_a_byte_of_a_file_outside_the_tree(entries):
    """validate (text, JSON, GitHub) and plan (either side) print no marker, whatever the tree holds."""
    base = Path(tempfile.mkdtemp(prefix="wsgate-links-"))
    os.environ["WSGATE_TEST_MARKER"] = MARKER  # what /proc/self/environ shows of this process
    try:
        root = build_tree(base, entries)
        good = base / "good"
        good.mkdir()
        (good / "gateway.yaml").write_text(GOOD)
        outputs = [run_cli("validate", str(root), "--format", fmt) for fmt in ("text", "json", "github")]
        outputs += [run_cli("plan", str(root), "--from", str(good), "--format", fmt) for fmt in ("text", "json")]
        outputs.append(run_cli("plan", str(good), "--from", str(root)))
        for output in outputs:
            assert MARKER not in output
    finally:
        os.environ.pop("WSGATE_TEST_MARKER", None)
        shutil.rmtree(base)


def _admin(port: int, path: str, method: str = "GET") -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


@pytest.mark.slow
def test_a_live_reload_never_serves_a_byte_of_a_file_outside_the_tree(tmp_path):
    """One running gateway (the marker in its environment) reloads generated trees: POST /reload, GET /reload,
    GET /config and its log never hold the marker."""
    root, outside = tmp_path / "config", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    populate(root, outside, [])
    with gateway_process(root, tmp_path / "gateway.log", env={"WSGATE_TEST_MARKER": MARKER}) as gateway:
        admin = gateway.ports["admin"]

        @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(trees)
        def reload_one(entries: list[tuple[str, str]]) -> None:
            populate(root, outside, entries)
            answers = _admin(admin, "/reload", "POST") + _admin(admin, "/reload") + _admin(admin, "/config")
            assert MARKER not in answers

        reload_one()
        assert MARKER not in gateway.stderr()
        assert gateway.process.poll() is None
