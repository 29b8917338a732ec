"""The image and the manifests: checked offline (no container runtime here), and against the config they ship."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml_support
from config_helpers import run_check

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in (DEPLOY / "kubernetes").glob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES = "1.31.0"  # the oldest Kubernetes the manifests promise to fit
ENV = {"WSGATE_REDIS_URL": "redis://redis:6379/0"}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml_support.load_all(path.read_text()) if d]


def resource(kind: str, name: str) -> dict:
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in deploy/kubernetes")


def gateway_config():
    result = run_check(DEPLOY / "config", env=ENV)
    assert result.ok, [d.headline() for d in result.diagnostics]
    return result.config


def dockerfile() -> dict[str, list[str]]:
    """Instructions of the Dockerfile (continuation lines joined): instruction -> its arguments, in order."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes(path):
    """Every manifest validates strictly (unknown fields are errors) against the Kubernetes API schemas."""
    import kubernetes_validate

    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_kustomization_lists_every_manifest():
    """`kubectl apply -k deploy/kubernetes` applies every manifest in the directory."""
    (kustomization,) = documents(DEPLOY / "kubernetes" / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_configmaps_hold_the_shipped_config_files():
    """The gateway's ConfigMap holds deploy/config/ file for file, the echo one deploy/echo/: one config, two forms."""
    data = resource("ConfigMap", "wsgate-config")["data"]
    assert data == {p.name: p.read_text() for p in sorted((DEPLOY / "config").glob("*.yaml"))}
    assert resource("ConfigMap", "echo-config")["data"] == {"echo.yaml": (DEPLOY / "echo" / "echo.yaml").read_text()}


def test_dockerfile_agrees_with_the_config_and_the_readme():
    """The image runs `wsgate run /config` as a non-root user, exposes the config's ports and the admin port,
    health-checks /healthz on the admin port, and installs with the README's command."""
    config = gateway_config()
    instructions = dockerfile()
    assert instructions["FROM"][0].endswith("-slim")
    assert instructions["ENTRYPOINT"] == ['["wsgate"]'] and instructions["CMD"] == ['["run", "/config"]']
    admin = config.settings.admin.port
    ports = {loaded.model.port for loaded in config.ports.values()}
    assert {int(p) for p in instructions["EXPOSE"][0].split()} == ports | {admin}
    (healthcheck,) = instructions["HEALTHCHECK"]
    assert f"http://127.0.0.1:{admin}/healthz" in healthcheck
    user = instructions["USER"][-1]
    assert user not in ("root", "0")
    (install,) = [run for run in instructions["RUN"] if "pip install" in run]
    readme_command = install.split(" && rm ")[0]
    assert readme_command in (ROOT / "README.md").read_text()
    assert shlex.split(readme_command)[:3] == ["python3", "-m", "venv"]


def test_deployment_probes_ports_and_grace_fit_the_config():
    """3 replicas; readiness on /readyz and liveness on /healthz at the admin port; the container ports are the
    image's; the config comes from the ConfigMap at /config; the kubelet waits longer than a full drain."""
    config = gateway_config()
    settings = config.settings
    deployment = resource("Deployment", "wsgate")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert deployment["spec"]["replicas"] == 3
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(named.values()) == {int(p) for p in dockerfile()["EXPOSE"][0].split()}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and named[get["port"]] == settings.admin.port
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + settings.shutdown_grace + settings.shutdown_timeout
    (mount,) = container["volumeMounts"]
    (volume,) = spec["volumes"]
    assert mount["mountPath"] == "/config" and volume["configMap"]["name"] == "wsgate-config"
    assert container["args"] == ["run", "/config"]
    assert spec["securityContext"]["runAsUser"] == int(dockerfile()["USER"][-1])
    env = {e["name"] for e in container["env"]}
    assert settings.state.backend == "redis" and settings.state.url.env in env
    service = resource("Service", "wsgate")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["ws"]  # the admin port stays internal
    pdb = resource("PodDisruptionBudget", "wsgate")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_compose_runs_two_gateways_redis_and_the_echo_backend():
    """The compose trial: two gateway instances on the shipped config with the Redis URL set, Redis, and the echo
    backend, stopped with more time than a full drain."""
    (compose,) = documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    settings = gateway_config().settings
    gateways = [s for s in services.values() if s.get("command") == ["run", "/config"]]
    assert len(gateways) == 2 and {"redis", "echo"} <= set(services)
    for service in gateways:
        assert "./config:/config:ro" in service["volumes"]
        assert service["environment"]["WSGATE_REDIS_URL"].startswith("redis://redis:")
        assert int(service["stop_grace_period"].rstrip("s")) > settings.shutdown_grace + settings.shutdown_timeout
    assert services["echo"]["command"] == ["echo", "/config"]


def test_shipped_configs_check_clean_of_errors():
    """deploy/config (with its Redis URL variable set) and deploy/echo check without errors."""
    gateway_config()
    assert run_check(DEPLOY / "echo").ok
