"""Config at scale (issue 17): the compiled schema check agrees with jsonschema, and a check cache re-reads only
the files that changed (counted in parses and document checks, never timed)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

from config_helpers import API, APP, PORT, found, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import PORT as PORT_0
from support import api_yaml, echo_backend, running_gateway, write_config

from gateway.config import CheckCache, check
from gateway.config.schema import passes, validator
from gateway.config.source import load
from gateway.config.values import apply as apply_values
from gateway.config.values import read_values

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def api(name: str, port: str = "default") -> str:
    return API.replace("name: EchoWS", f"name: {name}").replace("/EchoWS/", f"/{name}/").replace(
        "ports: [default]", f"ports: [{port}]"
    )


def app(name: str, apis: str) -> str:
    key = hashlib.sha256(name.encode()).hexdigest()
    return (APP.replace("name: demo-app", f"name: {name}").replace("apis: [EchoWS]", f"apis: [{apis}]")
            .replace(APP.split("sha256:")[1].split("\n")[0], key))


def tree(root: Path) -> None:
    """Seven files: a port, five APIs, two applications in one file."""
    write(root, "ports.yaml", PORT)
    for i in range(5):
        write(root, f"apis/api{i}.yaml", api(f"api{i}"))
    write(root, "applications/apps.yaml", app("one", "api0") + "---\n" + app("two", "api1, api2"))


def same_outcome(a, b) -> bool:
    """Two check results say the same: the same diagnostics (with quoted lines) and the same config digest."""
    def digest(result):
        return result.config.digest() if result.config is not None else None

    return [d.to_dict() for d in a.diagnostics] == [d.to_dict() for d in b.diagnostics] and digest(a) == digest(b)


# ------------------------------------------------------------ the cache


def test_unchanged_tree_is_neither_parsed_nor_checked_again(tmp_path):
    """A second check of an unchanged tree parses no file and checks no document, and says what the first said."""
    tree(tmp_path)
    cache = CheckCache()
    first = check([tmp_path], env={}, cache=cache)
    assert first.ok
    assert (cache.parsed, cache.checked) == (7, 8)
    again = check([tmp_path], env={}, cache=cache)
    assert (cache.parsed, cache.checked) == (0, 0)
    assert same_outcome(again, first)


def test_one_changed_file_is_the_only_one_parsed_and_checked(tmp_path):
    """Changing one API file re-parses that file and re-checks its one document; the result is a full check's."""
    tree(tmp_path)
    cache = CheckCache()
    check([tmp_path], env={}, cache=cache)
    throttled = api("api3").replace("- type: identify", "- type: throttle\n    max_connections: 3")
    write(tmp_path, "apis/api3.yaml", throttled)
    result = check([tmp_path], env={}, cache=cache)
    assert (cache.parsed, cache.checked) == (1, 1)
    assert result.ok
    assert result.config.apis["api3"].model.policies[0].type == "throttle"
    assert same_outcome(result, check([tmp_path], env={}))


def test_a_change_in_one_file_still_breaks_references_in_unchanged_ones(tmp_path):
    """Removing an API re-checks only its file, yet the unchanged application file that names it is reported."""
    tree(tmp_path)
    cache = CheckCache()
    check([tmp_path], env={}, cache=cache)
    (tmp_path / "apis" / "api0.yaml").unlink()
    result = check([tmp_path], env={}, cache=cache)
    assert (cache.parsed, cache.checked) == (0, 0)
    assert not result.ok
    assert ("WSG113", "apps.yaml", 6, 8) in found(result)
    assert same_outcome(result, check([tmp_path], env={}))
    assert any(d.source_line == "apis: [api0]" for d in result.diagnostics)


def test_a_broken_file_is_reported_then_its_fix_is_picked_up(tmp_path):
    """A file that fails its schema keeps failing from the cache until its content changes, then passes."""
    tree(tmp_path)
    cache = CheckCache()
    write(tmp_path, "ports.yaml", PORT + "prot: 1\n")
    broken = check([tmp_path], env={}, cache=cache)
    again = check([tmp_path], env={}, cache=cache)
    assert ("WSG100", "ports.yaml", 4, 1) in found(again)
    assert same_outcome(again, broken) and cache.parsed == 0
    write(tmp_path, "ports.yaml", PORT)
    fixed = check([tmp_path], env={}, cache=cache)
    assert fixed.ok and (cache.parsed, cache.checked) == (1, 1)


def test_renamed_file_is_parsed_under_its_new_name(tmp_path):
    """The cache is keyed by path as well as content: a moved file is read again and located at its new path."""
    tree(tmp_path)
    cache = CheckCache()
    check([tmp_path], env={}, cache=cache)
    (tmp_path / "apis" / "api0.yaml").rename(tmp_path / "apis" / "moved.yaml")
    result = check([tmp_path], env={}, cache=cache)
    assert cache.parsed == 1
    assert result.config.apis["api0"].location.file.endswith("moved.yaml")


async def test_reload_of_a_running_gateway_parses_only_what_changed(tmp_path):
    """A gateway started with the cache of its start-up check parses nothing on a reload of the unchanged tree,
    from the first reload on, and one file when one changed."""
    async with echo_backend() as backend:
        write_config(tmp_path, PORT_0)  # port 0 on loopback: a running gateway, unlike the check-only PORT
        root = tmp_path / "config"
        write(root, "echo.yaml", api_yaml("Echo", "/echo", backend.url("/echo/")))
        write(root, "other.yaml", api_yaml("Other", "/other", backend.url("/other/")))
        cache = CheckCache()
        config = check([root], cache=cache).config  # as `wsgate run` checks before it starts
        async with running_gateway(config, paths=[root], check_cache=cache) as gw:
            outcome = await gw.reload("test")
            assert outcome.ok and outcome.noop
            assert (gw.check_cache.parsed, gw.check_cache.checked) == (0, 0)
            write(root, "other.yaml", api_yaml("Other", "/other2", backend.url("/other/")))
            outcome = await gw.reload("test")
            assert outcome.ok and not outcome.noop
            assert (gw.check_cache.parsed, gw.check_cache.checked) == (1, 1)
            assert gw.config.apis["Other"].model.path == "/other2"


# ---------------------------------------------- compiled schema agreement

# The examples as the check sees them: `{value: ...}` resolved with the tree's defaults (docs/environments.md).
SEED_DOCUMENTS = [(d.data["kind"], d.data) for d in apply_values(load([EXAMPLES]).documents, read_values([]), {})[0]]
ODD_VALUES = [None, True, 0, -1, 1.5, "", "x", "/p", [], ["a"], {}, {"a": 1}, 2**40, "ws://h:1/", "sha256:ab"]


@st.composite
def mutated_document(draw):
    kind, data = draw(st.sampled_from(SEED_DOCUMENTS))
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 3))):
        node = data
        while True:  # walk down to a random mapping or list
            children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            containers = [(k, v) for k, v in children if isinstance(v, dict | list) and v]
            if not containers or draw(st.booleans()):
                break
            node = draw(st.sampled_from(containers))[1]
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if action == "add" and isinstance(node, dict):
            key = draw(st.sampled_from(["extra", "name", "type", "port", "by"]))
            node[key] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))
        elif keys and action == "delete":
            del node[draw(st.sampled_from(keys))]
        elif keys:
            node[draw(st.sampled_from(keys))] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))
    return kind, data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_document())
def test_compiled_schema_check_agrees_with_jsonschema(case):
    """The compiled validator passes a document exactly when jsonschema finds no error in it."""
    kind, data = case
    assert passes(kind, data) == (not any(validator(kind).iter_errors(data)))


def test_examples_pass_the_compiled_check():
    """Every example document passes the compiled check (the fast path is taken, not bypassed)."""
    assert SEED_DOCUMENTS and all(passes(kind, data) for kind, data in SEED_DOCUMENTS)


# ------------------------------------------------------------ discovery


def test_file_discovery_order_hidden_entries_and_duplicates(tmp_path):
    """Files come sorted as paths sort, hidden files and directories are skipped, a dangling symlink is not a
    file, and a file reached twice (a symlink, a second argument) is read once."""
    from gateway.config.source import find_files

    for name in ("b/x.yaml", "a-b/y.yml", "a/z.yaml", ".git/h.yaml", "a/.hidden.yaml", "a/notes.txt"):
        write(tmp_path, name, "kind: Port\n")
    (tmp_path / "a" / "link.yaml").symlink_to(tmp_path / "b" / "x.yaml")
    (tmp_path / "a" / "dangling.yaml").symlink_to(tmp_path / "missing.yaml")
    files, problems = find_files([tmp_path, tmp_path / "a" / "z.yaml"])
    assert problems == []
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a/link.yaml", "a/z.yaml", "a-b/y.yml"]
