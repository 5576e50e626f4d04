"""deploy/k8s: every manifest parses, and the Deployment, Services, HPA, ConfigMap,
Secret template, ServiceMonitor and kustomization agree with each other and with
the image (ports, probes, user, writable paths); the metrics port stays off the
inference Service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

from .dockerfile import parse_dockerfile

K8S = Path("deploy/k8s")
SECRET_TEMPLATE = "secret.example.yaml"
NEEDS_CRD = "servicemonitor.yaml"


@pytest.fixture(scope="module")
def manifests(repo: Path) -> dict[str, list[dict[str, Any]]]:
    """Every YAML file of deploy/k8s, each as its list of documents."""
    loaded = {
        path.name: [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        for path in sorted((repo / K8S).glob("*.yaml"))
    }
    assert loaded
    return loaded


METRICS_SERVICE = "dynanoise-metrics"  # the headless Service the ServiceMonitor selects


@pytest.fixture(scope="module")
def by_kind(manifests: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One manifest per kind; for Service, the inference Service `dynanoise` (the
    metrics Service is the fixture `metrics_service`)."""
    kinds: dict[str, dict[str, Any]] = {}
    for documents in manifests.values():
        for document in documents:
            if document["kind"] == "Service" and document["metadata"]["name"] == METRICS_SERVICE:
                continue
            assert document["kind"] not in kinds, f"two {document['kind']} manifests"
            kinds[document["kind"]] = document
    return kinds


@pytest.fixture(scope="module")
def metrics_service(manifests: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (found,) = [
        d
        for documents in manifests.values()
        for d in documents
        if d["kind"] == "Service" and d["metadata"]["name"] == METRICS_SERVICE
    ]
    return found


@pytest.fixture(scope="module")
def container(by_kind: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def test_every_manifest_has_kind_api_version_and_namespace(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    expected = {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    }
    kinds = set()
    for name, documents in manifests.items():
        for document in documents:
            if name == "kustomization.yaml":
                assert document["kind"] == "Kustomization"
                continue
            kinds.add(document["kind"])
            assert document["apiVersion"] and document["metadata"]["name"]
            if document["kind"] != "Namespace":
                assert document["metadata"]["namespace"] == "dynanoise", name
    assert expected <= kinds


def test_deployment_runs_two_replicas_of_the_image_on_8000(
    repo: Path, by_kind: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    deployment = by_kind["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert container["image"].split(":")[0].rsplit("/", 1)[-1] == "dynanoise"
    assert container["command"] == parse_dockerfile(repo / "Dockerfile")[-1].exec_form("CMD")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "metrics": 8002}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_metrics_are_scraped_from_the_metrics_port_only(
    by_kind: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    config = by_kind["ConfigMap"]["data"]
    metrics_port = int(config["DYNANOISE_METRICS_PORT"])
    assert metrics_port != int(config["DYNANOISE_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == metrics_port
    annotations = by_kind["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    # Probes stay on the inference port; the metrics listener has no health routes.
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", 8000)


def test_probes_use_the_health_endpoints(container: dict[str, Any]) -> None:
    # allow_stale: a database blip within the stale-tenant grace keeps pods ready.
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready?allow_stale=true"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", 8000)


def test_settings_come_from_the_configmap_and_the_secret(
    by_kind: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    sources = {
        ("configMapRef" if "configMapRef" in s else "secretRef"): next(iter(s.values()))["name"]
        for s in container["envFrom"]
    }
    assert sources["configMapRef"] == by_kind["ConfigMap"]["metadata"]["name"]
    assert sources["secretRef"] == by_kind["Secret"]["metadata"]["name"]
    config = by_kind["ConfigMap"]["data"]
    assert config["DYNANOISE_HOST"] == "0.0.0.0" and config["DYNANOISE_PORT"] == "8000"
    assert int(config["DYNANOISE_WORKERS"]) >= 2
    secret_keys = set(by_kind["Secret"]["stringData"])
    assert secret_keys == {
        "DYNANOISE_ADMIN_TOKEN",
        "DYNANOISE_DATABASE_URL",
        "DYNANOISE_METRICS_TOKEN",
    }
    assert not secret_keys & set(config), "secrets do not belong in the ConfigMap"
    assert not any("PASSWORD" in key or "TOKEN" in key for key in config)
    fields = set(Settings.model_fields)
    for key in [*config, *secret_keys]:
        assert key.removeprefix("DYNANOISE_").lower() in fields, f"{key} is not a setting"
    # A Service called `dynanoise` would inject DYNANOISE_PORT=tcp://... otherwise.
    assert by_kind["Deployment"]["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_secret_template_holds_placeholders_only(repo: Path, by_kind: dict[str, Any]) -> None:
    for value in by_kind["Secret"]["stringData"].values():
        assert "<REPLACE" in value
    assert "kubectl" in (repo / K8S / SECRET_TEMPLATE).read_text()  # says how to make the real one


def test_pod_is_non_root_with_a_read_only_root_filesystem(
    repo: Path, by_kind: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    image_user = parse_dockerfile(repo / "Dockerfile")[-1].all("USER")[-1].arguments
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == image_user.split(":")[0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get("/tmp") in empty_dirs
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
    # The multiprocess dir must sit on an emptyDir, below its mount point, so that
    # `serve` can remove and recreate it.
    assert any(
        metrics_dir.startswith(path + "/") and name in empty_dirs for path, name in mounts.items()
    )


def test_resources_are_requested_and_limited(container: dict[str, Any]) -> None:
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])


def test_service_and_service_monitor_select_the_pods(
    by_kind: dict[str, dict[str, Any]], metrics_service: dict[str, Any]
) -> None:
    pod_labels = by_kind["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = by_kind["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The inference Service offers the inference port only, never the metrics port.
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ("http", 8000)

    # The metrics Service is headless (discovery only) and offers the metrics port only.
    assert metrics_service["metadata"]["namespace"] == "dynanoise"
    assert metrics_service["spec"]["clusterIP"] == "None"
    assert metrics_service["spec"]["selector"].items() <= pod_labels.items()
    (metrics_port,) = metrics_service["spec"]["ports"]
    assert metrics_port["targetPort"] == "metrics"

    monitor = by_kind["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    assert selector <= metrics_service["metadata"]["labels"].items()
    assert not selector <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == metrics_port["name"] and endpoint["path"] == "/metrics"
    # It sends the token the pods require (the same Secret key they read).
    authorization = endpoint["authorization"]
    assert authorization["type"] == "Bearer"
    assert authorization["credentials"] == {
        "name": by_kind["Secret"]["metadata"]["name"],
        "key": "DYNANOISE_METRICS_TOKEN",
    }


def test_hpa_scales_the_deployment_on_cpu(by_kind: dict[str, dict[str, Any]]) -> None:
    hpa = by_kind["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment"
    assert target["name"] == by_kind["Deployment"]["metadata"]["name"]
    assert (
        hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"


def test_kustomization_lists_every_manifest_but_the_template_and_the_crd(
    repo: Path, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    (kustomization,) = manifests["kustomization.yaml"]
    listed = set(kustomization["resources"])
    assert listed == set(manifests) - {"kustomization.yaml", SECRET_TEMPLATE, NEEDS_CRD}
    assert all((repo / K8S / name).is_file() for name in listed)
    assert [i["name"] for i in kustomization["images"]] == ["dynanoise"]


def test_kustomize_builds_the_manifests(repo: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(repo / K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {d["kind"] for d in built} >= {"Namespace", "Deployment", "Service"}
    services = {d["metadata"]["name"] for d in built if d["kind"] == "Service"}
    assert services == {"dynanoise", METRICS_SERVICE}
    assert not any(d["kind"] == "Secret" for d in built), "the placeholder Secret must not ship"
