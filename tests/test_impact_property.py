"""Property: every connection a reload closes was predicted by the plan, with the same action and close code."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.apps import AppIndex
from gateway.config.models import API, Application, Port
from gateway.config.tree import Config, Loaded, Location
from gateway.credentials import key_digest
from gateway.impact import Accepted, Action, Impact
from gateway.plan import diff

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


@st.composite
def configs(draw) -> Config:
    """A small config: a few ports, APIs over them, applications registered to some of the APIs."""
    ports = {}
    for name in draw(st.sets(st.sampled_from(PORTS), min_size=1)):
        ports[name] = _loaded(Port(kind="Port", name=name, port=draw(st.sampled_from((8001, 8002))),
                                   host=draw(st.sampled_from(("127.0.0.1", "0.0.0.0"))),
                                   enabled=draw(st.booleans())))
    apis = {}
    for name in draw(st.sets(st.sampled_from(APIS))):
        apis[name] = _loaded(API.model_validate({
            "kind": "API", "name": name, "path": draw(st.sampled_from((f"/{name}", f"/{name}/v2"))),
            "ports": sorted(draw(st.sets(st.sampled_from(sorted(ports)), min_size=1))),
            "upstream": {"endpoints": [{"url": draw(st.sampled_from(("ws://u1:1/", "ws://u2:1/")))}]},
            "policies": [{"type": "identify", "by": ["api_key", "ip", "hostname", "basic"]}],
        }))
    applications = {}
    for name in draw(st.sets(st.sampled_from(APPS))):
        applications[name] = _loaded(Application.model_validate({
            "kind": "Application", "name": name,
            "identifiers": {
                "api_keys": sorted(draw(st.sets(st.sampled_from(KEYS)))),
                "ips": sorted(draw(st.sets(st.sampled_from(NETS)))),
                "hostnames": sorted(draw(st.sets(st.sampled_from(HOSTS)))),
                "basic": [{"username": u, "password": draw(st.sampled_from(("pw-one", "pw-two")))}
                          for u in sorted(draw(st.sets(st.sampled_from(USERS))))],
            },
            "apis": sorted(draw(st.sets(st.sampled_from(sorted(apis))))) if apis else [],
        }))
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_connection_a_reload_closes_was_predicted_by_the_plan(data):
    """For generated config changes and live connections, each non-keep reload decision is a plan disruption."""
    old = data.draw(configs(), label="old")
    new = data.draw(configs(), label="new")
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
