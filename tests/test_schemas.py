"""The committed JSON Schemas match the models, validate the examples, and catch what editors should flag."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator

from gateway.cli import main
from gateway.config import schema
from gateway.config.source import load
from gateway.config.values import apply as apply_values
from gateway.config.values import read_values

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "schemas"


def test_committed_schemas_are_fresh():
    """`schemas/` equals what the models generate; run `wsgate schemas` when this fails."""
    assert schema.stale(SCHEMAS) == []


def test_one_schema_per_kind_plus_resource():
    """There is a schema per kind and one for any resource, all valid 2020-12 schemas."""
    names = sorted(p.name for p in SCHEMAS.glob("*.schema.json"))
    assert names == sorted(
        ["api.schema.json", "application.schema.json", "echoserver.schema.json", "gateway.schema.json",
         "port.schema.json", "resource.schema.json"]
    )
    for path in SCHEMAS.glob("*.schema.json"):
        data = json.loads(path.read_text())
        assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(data)


def test_examples_point_at_their_schema_and_pass_it():
    """Every example starts with a yaml-language-server line naming an existing schema that accepts it."""
    resource = Draft202012Validator(json.loads((SCHEMAS / "resource.schema.json").read_text()))
    # `{value: ...}` nodes are resolved before the schema (docs/environments.md): with the tree's defaults here.
    for doc in apply_values(load([REPO / "examples"]).documents, read_values([]), {})[0]:
        first = Path(doc.file).read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema=")
        target = (Path(doc.file).parent / first.split("=", 1)[1]).resolve()
        assert target.exists()
        assert list(Draft202012Validator(json.loads(target.read_text())).iter_errors(doc.data)) == []
        assert list(resource.iter_errors(doc.data)) == []


def test_resource_schema_picks_the_branch_by_kind():
    """The any-document schema reports the chosen kind's errors only."""
    validator = Draft202012Validator(json.loads((SCHEMAS / "resource.schema.json").read_text()))
    errors = list(validator.iter_errors({"kind": "Port", "name": "p", "port": 1, "hots": "x"}))
    assert [e.validator for e in errors] == ["additionalProperties"]


def test_schemas_check_command(tmp_path, capsys):
    """`wsgate schemas --check` fails on a stale directory; `wsgate schemas` fixes it."""
    where = ["--dir", str(tmp_path), "--docs", str(tmp_path / "docs")]
    assert main(["schemas", "--check", *where]) == 1
    assert main(["schemas", *where]) == 0
    assert main(["schemas", "--check", *where]) == 0
    (tmp_path / "port.schema.json").write_text("{}")
    assert main(["schemas", "--check", *where]) == 1
    assert "port.schema.json" in capsys.readouterr().err
    assert main(["schemas", *where]) == 0
    (tmp_path / "docs" / "reference.md").write_text("# hand-edited\n")
    assert main(["schemas", "--check", *where]) == 1
    assert "reference.md" in capsys.readouterr().err


def test_committed_field_reference_is_fresh():
    """docs/reference.md is what the models generate now (run `wsgate schemas` after changing a model)."""
    from gateway.config import reference

    assert not reference.is_stale(Path(__file__).parents[1] / "docs"), "run `wsgate schemas`"
    text = (Path(__file__).parents[1] / "docs" / "reference.md").read_text()
    for kind in ("## Port", "## API", "## Application", "## EchoServer", "## Gateway", "#### `transform`"):
        assert kind in text


def test_validators_are_built_once_per_kind():
    """Each kind's validator is built once per process (building one per document made validate 20x slower)."""
    assert schema.validator("API") is schema.validator("API")
