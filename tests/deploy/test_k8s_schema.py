"""deploy/k8s against the Kubernetes API's own schemas, offline: every manifest, and
what `kubectl kustomize` builds from them, validates strictly (no unknown field) with
`kubernetes-validate` (PyPI, a dev dependency that ships the OpenAPI schemas of
each Kubernetes release) against the oldest and the newest release it knows.

`kubectl apply --dry-run=client` cannot do this here: it needs an API server even
with ``--validate=false``. The ServiceMonitor is a prometheus-operator CRD, whose
schema no offline package carries (tests/deploy/test_k8s.py checks its fields);
the kustomization is kustomize's input, not an API object."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is a dev dependency (pip install -e '.[dev]')",
)

K8S = Path("deploy/k8s")
NOT_IN_THE_API_SCHEMAS = {"Kustomization", "ServiceMonitor"}
_known = kubernetes_validate.utils.all_versions()
VERSIONS = sorted({_known[0], kubernetes_validate.utils.latest_version()})


def _documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _manifests(repo: Path) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{d['kind']}/{d.get('metadata', {}).get('name', '-')}", d)
        for path in sorted((repo / K8S).glob("*.yaml"))
        for d in _documents(path.read_text())
    ]


REPO = Path(__file__).resolve().parents[2]
MANIFESTS = [(name, d) for name, d in _manifests(REPO) if d["kind"] not in NOT_IN_THE_API_SCHEMAS]


def _validate(document: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("name", "document"), MANIFESTS, ids=[name for name, _ in MANIFESTS])
def test_each_manifest_validates_against_the_api_schema(
    name: str, document: dict[str, Any], version: str
) -> None:
    _validate(document, version)


def test_every_manifest_kind_has_a_schema_or_a_stated_reason() -> None:
    kinds = {d["kind"] for _, d in _manifests(REPO)}
    assert kinds - NOT_IN_THE_API_SCHEMAS >= {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert kinds >= NOT_IN_THE_API_SCHEMAS, "a kind listed as unchecked is gone: drop it"


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda d: d["spec"].update(replicas="two"), "is not of type"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readyProbe={}),
            "readyProbe",
        ),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
            "'name' is a required",
        ),
    ],
    ids=["wrong type", "unknown field", "missing required field"],
)
def test_the_validator_rejects_a_broken_deployment(mutation: Any, expected: str) -> None:
    """The check above can fail: the same Deployment, broken, does not validate."""
    (deployment,) = [d for _, d in MANIFESTS if d["kind"] == "Deployment"]
    broken = copy.deepcopy(deployment)
    mutation(broken)
    with pytest.raises(kubernetes_validate.ValidationError, match=expected):
        _validate(broken, VERSIONS[-1])


def test_what_kustomize_builds_validates_against_the_api_schema() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the kustomize output is not built")
    result = subprocess.run(
        [kubectl, "kustomize", str(REPO / K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built = _documents(result.stdout)
    assert built
    for document in built:
        if document["kind"] in NOT_IN_THE_API_SCHEMAS:
            continue
        for version in VERSIONS:
            _validate(document, version)
