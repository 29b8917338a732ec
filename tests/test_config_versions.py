"""The config format version: optional `apiVersion: wsgate/v1`, a note when absent, a located error when unknown."""

from __future__ import annotations

from config_helpers import API, APP, PORT, found, run_check, write

from gateway.cli import main


def versioned(text: str, version: str = "wsgate/v1") -> str:
    return f"apiVersion: {version}\n{text}"


def test_documents_with_and_without_api_version_are_the_same_config(tmp_path):
    """apiVersion: wsgate/v1 names the format only: the tree checks, and its digest is the unversioned tree's."""
    plain, pinned = tmp_path / "plain", tmp_path / "pinned"
    for root, wrap in ((plain, lambda t: t), (pinned, versioned)):
        write(root, "ports.yaml", wrap(PORT))
        write(root, "api.yaml", wrap(API))
        write(root, "app.yaml", wrap(APP))
    a, b = run_check(plain), run_check(pinned)
    assert a.ok and b.ok, (found(a), found(b))
    assert a.config.digest() == b.config.digest()
    assert (a.unversioned, b.unversioned) == (3, 0)


def test_validate_notes_documents_without_a_version(tmp_path, capsys):
    """validate accepts unversioned documents and says, once, how many were read as wsgate/v1."""
    write(tmp_path, "ports.yaml", versioned(PORT))
    write(tmp_path, "api.yaml", API + "---\n" + APP)
    assert main(["validate", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("note: 2 documents without apiVersion, read as wsgate/v1")
    assert lines[-1].startswith("valid:")


def test_an_unknown_version_is_refused_at_its_value(tmp_path):
    """apiVersion: wsgate/v2 is WSG010 at the value's line and column, with a hint to upgrade wsgate."""
    write(tmp_path, "ports.yaml", PORT)
    write(tmp_path, "api.yaml", versioned(API, "wsgate/v2"))
    write(tmp_path, "app.yaml", versioned(APP, "v1"))
    result = run_check(tmp_path)
    assert not result.ok
    assert ("WSG010", "api.yaml", 1, 13) in found(result)
    assert ("WSG010", "app.yaml", 1, 13) in found(result)
    by_file = {d.location.file.rsplit("/", 1)[-1]: d for d in result.diagnostics if d.code == "WSG010"}
    assert "upgrade wsgate" in by_file["api.yaml"].hint
    assert "apiVersion: wsgate/v1" in by_file["app.yaml"].hint
    # The other format's fields are not judged by this schema: one error per document, not a cascade.
    assert [d.code for d in result.errors if d.location.file.endswith("api.yaml")] == ["WSG010"]
