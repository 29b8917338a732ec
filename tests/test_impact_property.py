"""Property: every connection a reload closes was predicted by the plan, with the same action and close code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.build.apps import AppIndex
from gateway.build.credentials import key_digest
from gateway.changes.impact import Accepted, Action, Impact
from gateway.changes.plan import diff
from gateway.config.models import API, Application, Port
from gateway.config.tree import Config, Loaded, Location

PORTS = ("p1", "p2")
APIS = ("A", "B", "C")
APPS = ("x", "y")
KEYS = ("k1", "k2", "k3", "k4")
NETS = ("10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24")
HOSTS = ("a.example", "b.example")
PEERS = ("10.1.2.3", "10.9.9.9", "192.168.0.7")
USERS = ("u1", "u2")


def _loaded(model) -> Loaded:
    return Loaded(model, Location("gen.yaml", 1, 1), Path("."))


def _port(draw, name: str) -> Loaded:
    return _loaded(Port(kind="Port", name=name, port=draw(st.sampled_from((8001, 8002))),
                        host=draw(st.sampled_from(("127.0.0.1", "0.0.0.0"))), enabled=draw(st.booleans())))


def _api(draw, name: str, ports: list[str]) -> Loaded:
    return _loaded(API.model_validate({
        "kind": "API", "name": name, "path": draw(st.sampled_from((f"/{name}", f"/{name}/v2"))),
        "ports": sorted(draw(st.sets(st.sampled_from(ports), min_size=1))),
        "upstream": {"endpoints": [{"url": draw(st.sampled_from(("ws://u1:1/", "ws://u2:1/")))}]},
        "policies": [{"type": "identify", "by": ["api_key", "ip", "hostname", "basic"]}],
    }))


def _application(draw, name: str, apis: list[str]) -> Loaded:
    return _loaded(Application.model_validate({
        "kind": "Application", "name": name,
        "identifiers": {
            "api_keys": sorted(draw(st.sets(st.sampled_from(KEYS)))),
            "ips": sorted(draw(st.sets(st.sampled_from(NETS)))),
            "hostnames": sorted(draw(st.sets(st.sampled_from(HOSTS)))),
            "basic": [{"username": u, "password": draw(st.sampled_from(("pw-one", "pw-two")))}
                      for u in sorted(draw(st.sets(st.sampled_from(USERS))))],
        },
        "apis": sorted(draw(st.sets(st.sampled_from(apis)))) if apis else [],
    }))


def _edited(draw, loaded: Loaded) -> Loaded:
    """The application with one identifier or registration taken away: the everyday revocation."""
    data = loaded.model.model_dump(mode="json")
    lists = [(data["identifiers"], k) for k in ("api_keys", "ips", "hostnames", "basic") if data["identifiers"][k]]
    lists += [(data, "apis")] if data["apis"] else []
    if lists:
        holder, key = draw(st.sampled_from(lists))
        holder[key].pop(draw(st.integers(0, len(holder[key]) - 1)))
    return _loaded(Application.model_validate(data))


@st.composite
def configs(draw, base: Config | None = None) -> Config:
    """A small config: a few ports, APIs over them, applications registered to some of the APIs.

    With ``base``, each resource of it is kept as is (most often), dropped or rewritten, so the changes
    are the small ones a pull request makes as well as wholesale ones.
    """

    def pick(names: tuple[str, ...], old: Any) -> list[str]:
        if base is None:
            return sorted(draw(st.sets(st.sampled_from(names))))
        return [n for n in names if draw(st.sampled_from(("keep", "keep", "keep", "drop", "redo")
                                                         if n in old else ("absent", "absent", "add"))) in
                ("keep", "redo", "add")]

    def keep(old: Any, name: str) -> bool:
        return base is not None and name in old and draw(st.integers(0, 3)) > 0

    ports = {}
    for name in pick(PORTS, base.ports if base else {}) or ["p1"]:
        ports[name] = base.ports[name] if base and keep(base.ports, name) else _port(draw, name)
    apis = {}
    for name in pick(APIS, base.apis if base else {}):
        old = base.apis.get(name) if base else None
        usable = old is not None and set(old.model.ports) <= set(ports)
        apis[name] = old if usable and keep(base.apis, name) else _api(draw, name, sorted(ports))  # type: ignore[union-attr]
    applications = {}
    for name in pick(APPS, base.applications if base else {}):
        old = base.applications.get(name) if base else None
        usable = old is not None and set(old.model.apis) <= set(apis)
        if usable and keep(base.applications, name):
            applications[name] = _edited(draw, old) if draw(st.booleans()) else old  # type: ignore[arg-type]
        else:
            applications[name] = _application(draw, name, sorted(apis))
    return Config(root=Path("."), ports=ports, apis=apis, applications=applications)


@st.composite
def live_connections(draw, config: Config) -> list[Accepted]:
    """Connections the old config could have accepted: on an enabled port of their API, identified somehow."""
    apps = AppIndex.build(config, {})
    out = []
    for _ in range(draw(st.integers(0, 8))):
        routes = [(port, api) for api, loaded in config.apis.items() for port in loaded.model.ports
                  if port in config.ports and config.ports[port].model.enabled]
        if not routes:
            break
        port, api = draw(st.sampled_from(routes))
        registered = [a for a, loaded in config.applications.items() if api in loaded.model.apis]
        app = draw(st.sampled_from([None, *registered]))
        if app is None:
            out.append(Accepted(port=port, api=api, application="anonymous", identified_by="anonymous"))
            continue
        ids = config.applications[app].model.identifiers
        peer = draw(st.sampled_from(PEERS))
        ways = [("anonymous", None, None)]
        ways += [("api_key", key_digest(k), None) for k in ids.api_keys]
        ways += [("hostname", None, h) for h in ids.hostnames]
        ways += [("basic", apps.by_basic(u.username, u.password)[1], None) for u in ids.basic  # type: ignore[index]
                 if apps.by_basic(u.username, u.password) is not None]
        if apps.by_ip(peer) == app:
            ways.append(("ip", None, None))
        method, digest, hostname = draw(st.sampled_from(ways))
        if method == "anonymous":
            out.append(Accepted(port=port, api=api, application="anonymous", identified_by="anonymous"))
        else:
            out.append(Accepted(port=port, api=api, application=app, identified_by=method, key_digest=digest,
                                peer_ip=peer, hostname=hostname))
    return out


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_connection_a_reload_closes_was_predicted_by_the_plan(data):
    """For generated config changes and live connections, each non-keep reload decision is a plan disruption."""
    old = data.draw(configs(), label="old")
    new = data.draw(st.one_of(configs(old), configs()), label="new")
    connections = data.draw(live_connections(old), label="connections")
    plan = diff(old, new)
    predicted = [d for change in plan.changes for d in change.disruptions]
    impact = Impact(old, new, AppIndex.build(new, {}))  # what Gateway.reload builds
    for accepted in connections:
        decision = impact.decide(accepted)
        if decision.action is Action.KEEP:
            continue
        # A reader of the plan finds the connection by the selector alone, with the same action and code.
        matching = [d for d in predicted if d.selects(accepted) and d.action is decision.action]
        assert matching, (accepted, decision, predicted)
        assert decision.disruption in matching and decision.close_code == matching[0].close_code
        if decision.action is Action.DRAIN:
            # Drained, not revoked: no revocation in the plan reaches it by selector and credential.
            assert not any(d.action is Action.REVOKE and d.selects(accepted) and d.identifier is None
                           for d in predicted)
