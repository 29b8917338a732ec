"""The Gateway resource's `state` setting: validate's checks and what plan says about a change of backend."""

from __future__ import annotations

from config_helpers import base, found, run_check, write

from gateway.changes.plan import diff, render_json, render_text
from gateway.config import check


def gateway(state: str) -> str:
    return "kind: Gateway\nname: g\nstate:\n" + state


def test_memory_is_the_default_and_redis_url_is_accepted(tmp_path):
    """No state setting means memory; a well-formed redis:// URL checks clean."""
    base(tmp_path)
    result = run_check(tmp_path)
    assert result.config.settings.state.backend == "memory"
    write(tmp_path, "gateway.yaml", gateway("  backend: redis\n  url: redis://redis.internal:6379/0\n"))
    result = run_check(tmp_path)
    assert result.ok and result.diagnostics == []
    assert result.config.settings.state.heartbeat == 2.0


def test_malformed_redis_urls_are_errors_at_the_url(tmp_path):
    """A wrong scheme, no host, or a non-numeric database: WSG160 at the URL's line and column."""
    base(tmp_path)
    for url, message in (("http://redis:6379", "scheme 'http'"), ("redis://:6379", "no host"),
                         ("redis://redis:6379/cache", "database number")):
        write(tmp_path, "gateway.yaml", gateway(f"  backend: redis\n  url: {url}\n"))
        result = run_check(tmp_path)
        assert found(result) == [("WSG160", "gateway.yaml", 5, 8)], url
        assert message in result.diagnostics[0].summary


def test_redis_without_a_way_to_reach_it_warns(tmp_path):
    """A URL or password variable unset where validate runs: WSG220 at the variable name; set, it is clean."""
    base(tmp_path)
    write(tmp_path, "gateway.yaml", gateway("  backend: redis\n  url: {env: WSGATE_REDIS_URL}\n"))
    result = run_check(tmp_path)
    assert found(result) == [("WSG220", "gateway.yaml", 5, 14)]
    assert "WSGATE_REDIS_URL" in result.diagnostics[0].summary
    assert run_check(tmp_path, env={"WSGATE_REDIS_URL": "rediss://r:6380/1"}).diagnostics == []
    bad = run_check(tmp_path, env={"WSGATE_REDIS_URL": "redis//nope"})
    assert [d.code for d in bad.diagnostics] == ["WSG160"] and "nope" not in bad.diagnostics[0].summary
    write(tmp_path, "gateway.yaml", gateway("  backend: redis\n  url: redis://r:6379\n  password: {env: RPASS}\n"))
    assert found(run_check(tmp_path)) == [("WSG220", "gateway.yaml", 6, 19)]


def test_password_in_the_url_warns_without_quoting_it(tmp_path):
    """A password written into the URL: WSG221, and the rendered diagnostic does not contain it."""
    base(tmp_path)
    write(tmp_path, "gateway.yaml", gateway("  backend: redis\n  url: redis://:hunter2@r:6379/0\n"))
    result = run_check(tmp_path)
    assert [d.code for d in result.diagnostics] == ["WSG221"]
    assert "hunter2" not in repr(result.diagnostics[0].to_dict())


def test_plan_marks_a_change_of_state_backend_disruptive(tmp_path, monkeypatch):
    """memory → redis is a Gateway update marked disruptive (connections left open but no longer counted);
    only the heartbeat changing is not; a password in the URL is not shown."""
    monkeypatch.chdir(tmp_path)
    from pathlib import Path

    old, new, tuned = Path("old"), Path("new"), Path("tuned")
    for root in (old, new, tuned):
        base(root)
    write(new, "gateway.yaml", gateway("  backend: redis\n  url: redis://:s3cret@r:6379/0\n"))
    write(tuned, "gateway.yaml", gateway("  backend: redis\n  url: redis://:s3cret@r:6379/0\n  heartbeat: 1\n"))
    configs = {root: check([root], env={}).config for root in (old, new, tuned)}
    plan = diff(configs[old], configs[new])
    text = render_text(plan)
    assert plan.disruptive
    assert "state backend memory → redis" in text and "left open" in text
    assert "s3cret" not in text and "s3cret" not in str(render_json(plan))
    assert "redis://:***@r:6379/0" in text
    calm = diff(configs[new], configs[tuned])
    assert not calm.disruptive and [f.path for c in calm.changes for f in c.fields] == ["state.heartbeat"]
