"""The two ways to query a defended model give the same numbers: in process (ONNX +
the audit's defense) and black-box over HTTP against a live `dynanoise serve`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.audit.defenses import DynaNoiseDefense, build_defenses
from service.audit.oracle import Endpoint, HttpOracle, InProcessOracle, Oracle, OracleError
from service.defense import DefenseParams, NoiseMode
from service.tenants import TenantStore

from ..live import live_server
from ..onnx_factory import linear_logits, write_linear_model

ADMIN = "oracle-admin-token-of-32-characters-or-more"
N_FEATURES, N_CLASSES = 6, 5


@dataclass
class Deployment:
    url: str
    database_url: str
    model_dir: Path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("oracle")
    model_dir = write_linear_model(
        root / "models", name="lin", n_features=N_FEATURES, n_classes=N_CLASSES, seed=3
    )
    _train_small_target(root / "models" / "syn")
    database_url = f"sqlite:///{root / 'db.sqlite'}"
    with live_server(
        models_dir=root / "models", database_url=database_url, admin_token=ADMIN
    ) as url:
        yield Deployment(url, database_url, model_dir)


def _train_small_target(out: Path) -> None:
    """A served model with a manifest that holds its split, for the black-box audit."""
    torch = pytest.importorskip("torch")
    from service.audit.training import train_and_export

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_and_export(
            "synthetic", out, epochs=3, dataset_options={"n_samples": 300}, progress=False
        )
    finally:
        torch.set_num_threads(threads)


def _tenant(deployment: Deployment, name: str, **params: object) -> str:
    response = httpx.post(
        f"{deployment.url}/admin/tenants",
        json={"name": name, **params},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    response.raise_for_status()
    key: str = response.json()["api_key"]
    return key


def _inputs(n: int = 37, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(np.float32)


@pytest.mark.parametrize("endpoint", ["v1", "v2"])
def test_http_oracle_equals_in_process_oracle_for_keyed_noise(
    deployment: Deployment, endpoint: Endpoint
) -> None:
    name = f"keyed-{endpoint}"
    params = DefenseParams(base_variance=0.5, lambda_scale=2.0, temperature=3.0)
    key = _tenant(deployment, name, noise_mode="keyed", base_variance=0.5, temperature=3.0)
    # The secret never leaves the server's API; the test reads it from the store itself.
    store = TenantStore(deployment.database_url)
    try:
        secret = store.get(name).noise_secret
    finally:
        store.close()
    keyed = DynaNoiseDefense(
        "keyed",
        replace(params, noise_mode=NoiseMode.KEYED),
        secret=secret,
        model_id="lin@1",
    )
    local: Oracle = InProcessOracle.from_model_dir(
        deployment.model_dir, keyed, np.random.default_rng(0)
    )
    x = _inputs()
    with HttpOracle(deployment.url, key, "lin", endpoint=endpoint, batch_size=10) as remote:
        over_http = remote.query(x)
        again = remote.query(x[::-1])[::-1]
    in_process = local.query(x)
    assert over_http.shape == (len(x), N_CLASSES) and over_http.dtype == np.float32
    np.testing.assert_allclose(over_http, in_process, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(over_http, again)  # keyed: order and batching do not matter
    # Noise was really added: the answer is not the plain temperature softmax.
    z = linear_logits(deployment.model_dir, x) / params.temperature
    plain = np.exp(z - z.max(axis=1, keepdims=True))
    assert np.abs(in_process - plain / plain.sum(axis=1, keepdims=True)).max() > 1e-3


def test_http_oracle_sees_fresh_noise_change_between_calls(deployment: Deployment) -> None:
    key = _tenant(deployment, "fresh", noise_mode="fresh")
    with HttpOracle(deployment.url, key, "lin", endpoint="v2") as remote:
        x = _inputs(8)
        first, second = remote.query(x), remote.query(x)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(first, second)


def test_http_oracle_reports_a_refused_key(deployment: Deployment) -> None:
    with (
        HttpOracle(deployment.url, "not-a-key", "lin") as remote,
        pytest.raises(OracleError, match="401"),
    ):
        remote.query(_inputs(2))


def test_in_process_oracle_without_defense_is_the_model_softmax(tmp_path: Path) -> None:
    model_dir = write_linear_model(tmp_path, name="lin", n_features=N_FEATURES, n_classes=N_CLASSES)
    (none,) = build_defenses(["no_defense"])
    oracle = InProcessOracle.from_model_dir(model_dir, none, np.random.default_rng(0))
    x = _inputs(5)
    z = linear_logits(model_dir, x).astype(np.float64)
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(oracle.query(x), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_black_box_audit_of_a_live_deployment(deployment: Deployment) -> None:
    """`dynanoise audit --endpoint ...`: the served defense is attacked over HTTP with
    near-duplicates, no_defense in process beside it, members told apart by the
    manifest's split, the attacker's population as shadows."""
    from service.audit.config import AuditConfig, HttpTarget
    from service.audit.runner import run_audit

    key = _tenant(deployment, "audited", noise_mode="keyed")
    config = AuditConfig(
        dataset="synthetic",
        defenses=("no_defense",),
        epochs=2,
        population=6,
        n_paper_shadows=1,
        repeats=1,
        budgets=(1, 2),
        n_bootstrap=10,
        label_only=False,
    )
    http = HttpTarget(
        deployment.url,
        key,
        "syn",
        params=DefenseParams(noise_mode=NoiseMode.KEYED),
        endpoint="v2",
    )
    outcome = run_audit(
        config, model_dir=deployment.model_dir.parent / "syn", http=http, progress=False
    )
    results = outcome.results
    assert list(results["results"]) == ["no_defense", "served"]
    assert results["target"]["source"] == "http" and results["target"]["model_id"] == "syn@1"
    assert key not in str(results)
    served = results["results"]["served"]
    assert set(served) == {"paper", "defense-aware"}
    attacks = served["defense-aware"]["attacks"]
    assert {"lira_online/near_duplicate/2", "rmia/repeat/1"} <= set(attacks)
    assert "lira_online/parameter_change/2" not in attacks  # needs the tenant's operator
    evaluation = results["evaluation"]
    assert (
        evaluation["targets"] == 1 and evaluation["member_pairs"] == evaluation["non_member_pairs"]
    )
    # Keyed noise: the deployment answers exact repeats identically, so averaging them
    # changes nothing; near-duplicates get fresh draws.
    assert attacks["lira_online/repeat/2"]["auc"] == attacks["lira_online/repeat/1"]["auc"]
