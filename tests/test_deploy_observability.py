"""deploy/: the Grafana dashboard and the Prometheus alert rules name only metrics a live gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from support import PORT, api_yaml, run, running_gateway, scrape, write_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "wsgate-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "wsgate-alerts.yaml"
METRIC = re.compile(r"\b((?:wsgate|process)_[a-zA-Z0-9_]+)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return found


def alert_rules() -> list[dict[str, Any]]:
    document = YAML(typ="safe").load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_deploy_files_name_only_metrics_a_live_gateway_exports(tmp_path):
    """Every wsgate_* and process_* name in the dashboard and the alert rules is a series name of /metrics."""
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {"WsgateNoActiveConnections", "WsgateReloadFailing",
                                           "WsgateUpstreamErrorsRising", "WsgateFileDescriptorsNearLimit"}
    expressions = dashboard_expressions() + [r["expr"] for r in rules]
    referenced = {name for expr in expressions for name in METRIC.findall(expr)}
    assert len(referenced) >= 15, referenced

    async def scenario() -> set[str]:
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", "ws://127.0.0.1:9/echo/"))
        async with running_gateway(config) as gw:
            result = await scrape(gw)
        # Names a family exports, even before its first sample (a counter family with no label values yet).
        return {family.name + suffix for family in result.families.values()
                for suffix in SUFFIXES.get(family.type, ("",))} | {s.name for s in result.samples}

    exported = run(scenario())
    assert referenced - exported == set()


def test_the_dashboard_is_importable_grafana_json():
    """The dashboard has a uid, a data source variable, and every panel a title, a position and a query."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "wsgate-overview"
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])
    for panel in dashboard["panels"]:
        assert panel["title"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])
