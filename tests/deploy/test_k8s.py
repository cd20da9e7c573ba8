"""deploy/k8s, checked offline: both overlays render with ``kubectl kustomize``, every object validates against the
Kubernetes OpenAPI schemas (kubernetes-validate: the schemas ship inside the wheel, strict mode refuses unknown
fields), and the policies deploy/k8s/README.md states hold for every pod: probes, non-root, limits, pinned images,
documented variables, a PodDisruptionBudget and an autoscaler per long-running Deployment, network policies."""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.dev import k8s_assets
from tests.support import tools
from tests.unit.test_env_example import documented

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# The oldest version with native gRPC probes as GA (1.27) is older than the oldest schema set the validator ships
# (1.28); the newest it ships. Both must accept every object.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
# Deployments that serve or relay, and so need an autoscaler and a disruption budget. The offer sweep (a few
# queries a second whatever the load) and the dev stand-in have a budget or nothing: see deploy/k8s/README.md.
SCALED = {"event", "booking", "review", "worker", "envoy", "nginx"}
GRPC_SERVICES = {"event": 50051, "booking": 50052, "review": 50053}
# Containers with nothing to probe (deploy/k8s/base/offer-sweep.yaml says why).
UNPROBED = {"offer-sweep"}


def kubectl() -> str:
    path = tools.require("kubectl", "rendering deploy/k8s")
    _check_kustomize(path)
    return path


@cache
def _check_kustomize(path: str) -> None:
    version = subprocess.run([path, "version", "--client"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"Kustomize Version: v(\d+)", version)
    if found is None or int(found.group(1)) < 4:
        pytest.fail(f"{path} has no kustomize v4+ (`{path} version --client`: {version.strip()!r}); kubectl >= 1.21")


@cache
def _render(overlay: str, kubectl_path: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl_path, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render(overlay: str) -> list[dict[str, Any]]:
    return _render(overlay, kubectl())


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_k8s_assets_are_fresh() -> None:
    """envoy.yaml (the compose render), the descriptor set and nginx.conf copied into base/ are current."""
    assert k8s_assets.stale() == [], "run: .venv/bin/python -m services.dev.k8s_assets"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_matches_the_kubernetes_schemas(overlay: str, version: str) -> None:
    objects = render(overlay)
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {str(exc).splitlines()[0]}")
    assert not problems, "\n".join(problems)


def test_the_validator_refuses_a_broken_object() -> None:
    """The check above can fail: a misspelt field and a wrong type are both refused."""
    deployment = of_kind(render("prod"), "Deployment")["booking"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    misspelt = {**container, "readinesProbe": container["readinessProbe"]}
    del misspelt["readinessProbe"]
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    template = deployment["spec"]["template"]
    typo = {**template, "spec": {**template["spec"], "containers": [misspelt]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**deployment, "spec": {**deployment["spec"], "template": typo}}, "1.28.0", True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(overlay: str) -> None:
    problems = []
    for name, spec in pod_specs(render(overlay)):
        pod = spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True or not pod.get("runAsUser"):
            problems.append(f"{name}: runAsNonRoot/runAsUser")
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: automountServiceAccountToken: false (no pod talks to the API server)")
        for c in containers(spec):
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}/{c['name']}: allowPrivilegeEscalation false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}/{c['name']}: readOnlyRootFilesystem")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}/{c['name']}: drop ALL capabilities")
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                    problems.append(f"{name}/{c['name']}: {kind} cpu and memory")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay: str) -> None:
    images = {c["image"] for _, spec in pod_specs(render(overlay)) for c in containers(spec)}
    assert images
    for image in images:
        name, _, digest = image.partition("@")
        tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
        assert digest or tag, f"{image}: untagged (pin a version or a digest)"
        assert "latest" not in tag, f"{image}: a moving tag"


def test_prod_runs_the_release_image() -> None:
    images = {c["image"] for _, spec in pod_specs(render("prod")) for c in containers(spec)}
    assert any(i.startswith("ghcr.io/cowatch/cowatch:") for i in images), images
    assert not any(i.startswith("cowatch:") for i in images), "the dev image leaked into prod"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_shutdown(overlay: str) -> None:
    objects = render(overlay)
    deployments = of_kind(objects, "Deployment")
    config = of_kind(objects, "ConfigMap")["cowatch-config"]["data"]
    drain = float(config["COWATCH_SHUTDOWN_DRAIN_SECONDS"])
    grace = float(config["COWATCH_SHUTDOWN_GRACE_SECONDS"])
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        for c in spec["containers"]:
            if name in UNPROBED:
                continue
            assert "readinessProbe" in c and "livenessProbe" in c, f"{name}/{c['name']}: probes"
        if name in GRPC_SERVICES:
            (c,) = spec["containers"]
            port = GRPC_SERVICES[name]
            service = f"cowatch.{name}.v1.{name.capitalize()}Service"
            assert c["readinessProbe"]["grpc"] == {"port": port, "service": service}
            # liveness on the port, not grpc.health.v1 (whose overall status follows the database too): a database
            # outage must restart nothing
            assert c["livenessProbe"]["tcpSocket"] == {"port": port}
            assert "grpc" not in c["startupProbe"] and "grpc" not in c["livenessProbe"]
            assert c["livenessProbe"]["failureThreshold"] * c["livenessProbe"]["periodSeconds"] >= 30
            env = {e["name"]: e for e in c["env"]}
            assert env["COWATCH_GRPC_PORT"]["value"] == str(port)
            assert spec["terminationGracePeriodSeconds"] > drain + grace, name
    worker = deployments["worker"]["spec"]["template"]["spec"]
    worker_env = {e["name"]: e.get("value") for e in worker["containers"][0]["env"]}
    assert worker["terminationGracePeriodSeconds"] > float(worker_env["COWATCH_SHUTDOWN_GRACE_SECONDS"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_env_var_is_documented(overlay: str) -> None:
    objects = render(overlay)
    config_maps = of_kind(objects, "ConfigMap")
    names: set[str] = set()
    for _, spec in pod_specs(objects):
        for c in containers(spec):
            names |= {e["name"] for e in c.get("env", [])}
            for source in c.get("envFrom", []):
                names |= set(config_maps[source["configMapRef"]["name"]]["data"])
    missing = sorted(names - documented())
    assert not missing, f"document these in .env.example: {missing}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_only_by_reference(overlay: str) -> None:
    objects = render(overlay)
    secret_keys = {"database-url", "migrate-database-url", "redis-url", "jwt-hs256-secret"}
    for _, spec in pod_specs(objects):
        for c in containers(spec):
            for e in c.get("env", []):
                if any(word in e["name"] for word in ("DATABASE_URL", "SECRET", "REDIS_URL", "PASSWORD")):
                    assert "value" not in e, f"{c['name']}: {e['name']} inline; use a secretKeyRef"
                    assert e["valueFrom"]["secretKeyRef"]["key"] in secret_keys
    secrets = of_kind(objects, "Secret")
    if overlay == "prod":
        assert secrets == {}, "prod defines no Secret: it references one created from the secret store"
    else:
        (secret,) = secrets.values()
        jwt = base64.b64decode(secret["data"]["jwt-hs256-secret"]).decode()
        assert jwt.startswith("dev-only-not-a-secret"), "the dev Secret must look fake"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_and_autoscalers(overlay: str) -> None:
    objects = render(overlay)
    deployments = of_kind(objects, "Deployment")
    budgets = of_kind(objects, "PodDisruptionBudget").values()
    pdbs = {pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for pdb in budgets}
    hpas = {hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in of_kind(objects, "HorizontalPodAutoscaler").values()}
    assert not SCALED - set(deployments)
    assert not SCALED - pdbs, f"no PodDisruptionBudget: {SCALED - pdbs}"
    assert not SCALED - set(hpas), f"no HorizontalPodAutoscaler: {SCALED - set(hpas)}"
    for name, hpa in hpas.items():
        assert name in deployments
        kinds = [m["type"] for m in hpa["spec"]["metrics"]]
        assert "Resource" in kinds, f"{name}: scales on CPU"
    worker_metrics = [m for m in hpas["worker"]["spec"]["metrics"] if m["type"] == "External"]
    if overlay == "prod":
        (lag,) = worker_metrics
        assert lag["external"]["metric"]["name"] == "cowatch_outbox_pending"
    else:
        assert worker_metrics == [], "dev clusters have no metrics adapter"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_headless_services_for_envoy(overlay: str) -> None:
    objects = render(overlay)
    services = of_kind(objects, "Service")
    envoy_config = yaml.safe_load(of_kind(objects, "ConfigMap")[_generated(objects, "envoy")]["data"]["envoy.yaml"])
    for cluster in envoy_config["static_resources"]["clusters"]:
        assert cluster["type"] == "STRICT_DNS", cluster["name"]
        for endpoint in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            address = endpoint["endpoint"]["address"]["socket_address"]
            service = services[address["address"]]
            assert service["spec"]["clusterIP"] == "None", f"{service['metadata']['name']}: headless"
            assert address["port_value"] in {p["port"] for p in service["spec"]["ports"]}


def _generated(objects: list[dict[str, Any]], prefix: str) -> str:
    (name,) = [n for n in of_kind(objects, "ConfigMap") if re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", n)]
    return name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay: str) -> None:
    objects = render(overlay)
    policies = of_kind(objects, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    # only Envoy reaches the services' gRPC ports
    tier = {"cowatch.io/tier": "service"}
    to_services = [p for p in policies.values() if p["spec"]["podSelector"].get("matchLabels") == tier]
    (ingress,) = [rule for p in to_services for rule in p["spec"].get("ingress", [])]
    assert ingress["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "envoy"}}}]
    # only the pods labelled db-client may open 5432/6379, and those are the services, the worker, the sweep, the Job
    db_egress = policies["db-clients-to-postgres-redis"]["spec"]
    assert db_egress["podSelector"] == {"matchLabels": {"cowatch.io/db-client": "true"}}
    ports = {p["port"] for rule in db_egress["egress"] for p in rule["ports"]}
    assert ports == {5432, 6379}
    for other in policies.values():
        if other is policies["db-clients-to-postgres-redis"]:
            continue
        for rule in other["spec"].get("egress", []):
            assert not {p.get("port") for p in rule.get("ports", [])} & {5432, 6379}, other["metadata"]["name"]
    db_clients = {
        name for name, obj in {**of_kind(objects, "Deployment"), **of_kind(objects, "Job")}.items()
        if obj["spec"]["template"]["metadata"]["labels"].get("cowatch.io/db-client") == "true"
    }  # fmt: skip
    assert db_clients == {"event", "booking", "review", "worker", "offer-sweep", "migrate"}
    if overlay == "prod":
        assert all("ipBlock" in peer for rule in db_egress["egress"] for peer in rule["to"])


def test_dev_only_objects() -> None:
    dev = of_kind(render("dev"), "Deployment")
    prod = of_kind(render("prod"), "Deployment")
    assert "notification" in dev and "notification" not in prod
    assert set(dev) - {"notification"} == set(prod)
