"""validate on hostile files: a diagnostic and exit 1, never a traceback or a crash."""

from __future__ import annotations

import pytest

from gateway.cli import main

CASES = {
    "deep flow nesting": ("kind: API\nname: a\nx: " + "[" * 100_000 + "]" * 100_000 + "\n").encode(),
    "deep block nesting": ("kind: API\nname: b\n" + "".join(" " * i + "k:\n" for i in range(3_000))).encode(),
    "deep sequence nesting": ("kind: API\nname: c\nx:\n" + "- " * 5_000 + "1\n").encode(),
    "UTF-16 with a BOM": "kind: Port\nname: u\nport: 1\n".encode("utf-16"),
    "Latin-1 bytes": "kind: Port\nname: café\nport: 1\n".encode("latin-1"),
    "a NUL byte": b"kind: Port\x00\nname: n\nport: 1\n",
    "a 20 MB scalar": b"kind: API\nname: h\ndescription: " + b"x" * (20 * 2**20) + b"\n",
    "binary noise": bytes(range(256)) * 64,
}


@pytest.mark.parametrize("content", list(CASES.values()), ids=list(CASES))
def test_hostile_file_is_a_diagnostic_not_a_traceback(tmp_path, capsys, content):
    """Each hostile file makes validate exit 1 with located diagnostics on stdout and nothing on stderr."""
    (tmp_path / "hostile.yaml").write_bytes(content)
    assert main(["validate", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "hostile.yaml:" in captured.out and " error WSG" in captured.out
    assert "Traceback" not in captured.out + captured.err
