"""Property tests: whatever YAML comes in, build() (what validate, plan, run and reload call) answers with a config and
its artefacts or with located diagnostics; it never raises."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.build.pipeline import build
from gateway.config.diagnostics import render_github, render_json, render_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEEDS = [p.read_text() for p in sorted(EXAMPLES.rglob("*.yaml"))]
YAML_BITS = [
    ":", "- ", "---\n", "\t", "  ", "\n", "{", "}", "[", "]", "&a ", "*a", "!!binary ", "<<: ", "? ", "'", '"',
    "kind: API\n", "kind: Port\n", "null", "~", "1.10", "0x1F", "yes", "2024-01-01", "#", "|\n", ">-\n", "\x00", "é",
]
TREE_CODES = {"WSG006"}  # no resources in the tree
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(text: str) -> None:
    """Build a tree of one file holding ``text`` and assert what every answer must be."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        (root / "transforms").mkdir()
        (root / "transforms" / "tutorial.py").write_text("def client_transformation(m):\n    return m.payload\n")
        result = build([tmp], env={})  # anything but a Built is an exception, which fails the property
        errors = [d for d in result.diagnostics if d.is_error]
        assert (result.config is not None) == (not errors) == (result.artefacts is not None)
        lines = len(text.splitlines()) + 1  # a problem may point just past the last line (end of file)
        for d in result.diagnostics:
            assert d.code.startswith("WSG") and d.summary
            if d.location is None:
                assert d.code in TREE_CODES, d  # only a problem of the whole tree has no place in a file
                continue
            where = Path(d.location.file)
            where = where if where.is_absolute() else root / where
            assert where.is_file(), d
            assert d.location.line >= 1 and d.location.col >= 1, d
            if where == root / "a.yaml":
                assert d.location.line <= lines, d
        assert len({(d.code, d.summary, d.location) for d in result.diagnostics}) == len(result.diagnostics)
        render_text(result.diagnostics)
        render_json(result.diagnostics)
        render_github(result.diagnostics)


@SETTINGS
@given(st.lists(st.sampled_from(YAML_BITS + list("abcxyz019 -_/.")), max_size=120).map("".join))
def test_random_yaml_never_raises(text):
    """Random YAML-ish text builds or gives located diagnostics, never an exception."""
    run(text)


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "swap", "dup"]))
        lines = text.splitlines(keepends=True) or [""]
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        if op == "insert":
            text = text[:i] + draw(st.sampled_from(YAML_BITS)) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 12)):]
        elif op == "replace":
            text = text[:i] + draw(st.text(max_size=6)) + text[i + 1:]
        elif op == "swap" and len(lines) > 1:
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[a], lines[b] = lines[b], lines[a]
            text = "".join(lines)
        elif op == "dup":
            j = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: j + 1] + [lines[j]] + lines[j + 1:])
    return text


@SETTINGS
@given(mutated())
def test_mutated_examples_never_raise(text):
    """The tutorial's files, mutated (characters inserted, deleted, lines swapped), never crash build()."""
    run(text)


@settings(max_examples=100, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["kind", "name", "port", "path", "ports", "upstream", "policies", "type", "x"]),
        children, max_size=5),
    max_leaves=20,
).map(lambda value: {"kind": "API", "name": "a", **value} if isinstance(value, dict) else value))
def test_structured_documents_never_raise(value):
    """Documents with the right keys and wrong shapes give located diagnostics, not exceptions."""
    import json

    run(json.dumps(value))
