"""The one build path: what validate accepts compiles; broken artefacts are diagnostics at their field."""

from __future__ import annotations

import trustme
from config_helpers import API, PORT, base, found, write

from gateway.build.pipeline import build
from gateway.cli import main

WSS_API = API.replace("ws://backend.internal:8765/api/demo/", "wss://backend.internal:8765/api/demo/")


def test_garbage_ca_file_fails_validate(tmp_path, capsys):
    """A wss upstream whose CA file holds garbage is WSG171 at `ca_file`, and validate exits 1."""
    write(tmp_path, "apis/ca.pem", "this is not a certificate\n")
    base(tmp_path, api=WSS_API.replace("policies:", "  tls:\n    ca_file: ca.pem\npolicies:"))
    result = build([tmp_path], env={})
    assert not result.ok
    assert [f for f in found(result) if f[0].startswith("WSG17")] == [("WSG171", "echo.yaml", 9, 14)]
    assert main(["validate", str(tmp_path)]) == 1
    assert "error WSG171: API 'EchoWS': the upstream CA file cannot be loaded" in capsys.readouterr().out


def test_good_ca_file_builds(tmp_path):
    """A real CA bundle passes the build, so run compiles what validate accepted."""
    (tmp_path / "apis").mkdir()
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "apis" / "ca.pem"))
    base(tmp_path, api=WSS_API.replace("policies:", "  tls:\n    ca_file: ca.pem\npolicies:"))
    assert build([tmp_path], env={}).ok


def test_mismatched_certificate_and_key_fail_validate(tmp_path):
    """A Port whose key does not belong to its certificate is WSG170 at `tls.cert`."""
    ca = trustme.CA()
    one, other = ca.issue_cert("a.example"), ca.issue_cert("b.example")
    one.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    base(tmp_path, port=PORT + "tls:\n  cert: cert.pem\n  key: key.pem\n")
    result = build([tmp_path], env={})
    assert not result.ok
    assert [f for f in found(result) if f[0].startswith("WSG17")] == [("WSG170", "ports.yaml", 5, 9)]


def test_unwritable_log_target_fails_validate(tmp_path):
    """A log-invocation file under a path that is a file, not a directory, is WSG173 at `file`."""
    write(tmp_path, "apis/logs", "a file where a directory should be\n")
    base(tmp_path, api=API + "  - type: log-invocation\n    file: logs/echo.jsonl\n")
    result = build([tmp_path], env={})
    assert [f for f in found(result) if f[0].startswith("WSG17")] == [("WSG173", "echo.yaml", 11, 11)]
