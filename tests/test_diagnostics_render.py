"""Rendering diagnostics as text (with a caret), JSON and GitHub annotations."""

from __future__ import annotations

import json

from gateway.config.diagnostics import Diagnostic, Related, render_github, render_json, render_text, summary_line
from gateway.config.tree import Location

WSG104 = Diagnostic(
    "error",
    "WSG104",
    "upstream path ends with '/' but echo server 'b' serves /api/demo",
    Location("apis/echo.yaml", 12, 40),
    hint="write the upstream URL's path as /api/demo",
    source_line="    - url: ws://localhost:8765/api/demo/",
)


def test_text_has_headline_source_caret_and_hint():
    """The text form is `file:line:col: error CODE: summary`, the line, a caret under the column, the hint."""
    assert render_text([WSG104]).splitlines() == [
        "apis/echo.yaml:12:40: error WSG104: upstream path ends with '/' but echo server 'b' serves /api/demo",
        " 12 |     - url: ws://localhost:8765/api/demo/",
        "    |                                        ^",
        "  hint: write the upstream URL's path as /api/demo",
    ]


def test_text_shows_related_locations_and_keeps_tabs_aligned():
    """Notes name the related location; tabs before the column are kept so the caret lines up."""
    d = Diagnostic(
        "warning", "WSG205", "x", Location("f.yaml", 3, 3), source_line="\tab",
        related=(Related(Location("f.yaml", 1, 1), "first here"),),
    )
    lines = render_text([d]).splitlines()
    assert lines[0] == "f.yaml:3:3: warning WSG205: x"
    assert lines[2] == "   | \t ^"
    assert lines[3] == "  note: first here: f.yaml:1:1"


def test_json_round_trips_every_field():
    """The JSON form carries counts, validity and each diagnostic's fields."""
    data = json.loads(render_json([WSG104]))
    assert data["valid"] is False and data["errors"] == 1 and data["warnings"] == 0
    (d,) = data["diagnostics"]
    assert (d["code"], d["file"], d["line"], d["col"], d["severity"]) == ("WSG104", "apis/echo.yaml", 12, 40, "error")
    assert d["hint"] == "write the upstream URL's path as /api/demo"


def test_github_annotation_escapes_properties_and_newlines():
    """GitHub workflow commands escape ':' and ',' in properties and newlines in the message."""
    d = Diagnostic("warning", "WSG200", "API key in plain text", Location("a,b:c.yaml", 2, 5), hint="hash it")
    assert render_github([d]) == (
        "::warning file=a%2Cb%3Ac.yaml,line=2,col=5,title=WSG200::API key in plain text%0Ahint: hash it\n")
    assert render_github([WSG104]).startswith("::error file=apis/echo.yaml,line=12,col=40,title=WSG104::")


def test_summary_line_counts():
    """The summary counts errors and warnings with plurals."""
    assert summary_line([WSG104]) == "1 error, 0 warnings"
