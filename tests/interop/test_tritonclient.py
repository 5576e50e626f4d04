"""The off-the-shelf tritonclient.http client against a live dynanoise server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.harness.launcher import free_port

from ..live import live_server
from ..onnx_factory import write_linear_model

tritonclient_http = pytest.importorskip("tritonclient.http")

ADMIN = "live-admin-token-of-32-characters-or-more"
METRICS_TOKEN = "interop-metrics-token-of-32-characters"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("interop")
    write_linear_model(root / "models", name="toy", n_features=4, n_classes=3)
    with live_server(
        models_dir=root / "models",
        database_url=f"sqlite:///{root / 'db.sqlite'}",
        admin_token=ADMIN,
    ) as url:
        created = httpx.post(
            f"{url}/admin/tenants",
            json={"name": "triton", "noise_mode": "keyed"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        created.raise_for_status()
        yield url, created.json()["api_key"]


def _client(url: str) -> tritonclient_http.InferenceServerClient:
    return tritonclient_http.InferenceServerClient(url=url.removeprefix("http://"))


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_gets_probabilities(server: tuple[str, str], binary: bool) -> None:
    url, key = server
    client = _client(url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("toy")
    assert client.get_model_metadata("toy")["inputs"][0]["shape"] == [-1, 4]

    x = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 0.0, -1.0, 3.0]], dtype=np.float32)
    infer_input = tritonclient_http.InferInput("input", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x, binary_data=binary)
    outputs = [tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(
        "toy", [infer_input], outputs=outputs, headers={"Authorization": f"Bearer {key}"}
    )
    p = result.as_numpy("probabilities")
    assert p.shape == (2, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_tritonclient_defaults_binary_output_when_no_outputs_requested(
    server: tuple[str, str],
) -> None:
    url, key = server
    client = _client(url)
    x = np.ones((3, 4), dtype=np.float32)
    infer_input = tritonclient_http.InferInput("input", [3, 4], "FP32")
    infer_input.set_data_from_numpy(x)  # binary by default
    result = client.infer("toy", [infer_input], headers={"Authorization": f"Bearer {key}"})
    first = result.as_numpy("probabilities")
    again = client.infer("toy", [infer_input], headers={"Authorization": f"Bearer {key}"}).as_numpy(
        "probabilities"
    )
    assert first.shape == (3, 3)
    np.testing.assert_array_equal(first, again)  # keyed tenant: identical query, identical answer


@pytest.mark.parametrize(
    ("model", "shape", "key", "status", "words"),
    [
        ("toy", [1, 4], "Bearer wrong", "401", "API key"),
        ("nosuchmodel", [1, 4], None, "404", "nosuchmodel"),
        ("toy", [1, 5], None, "422", "shape"),
    ],
    ids=["401", "404", "422"],
)
def test_tritonclient_prints_the_servers_error_message(
    server: tuple[str, str], model: str, shape: list[int], key: str | None, status: str, words: str
) -> None:
    """Issue 15: a v2 error was {"error": {"code", "message"}}; the client's str(e)
    then raised TypeError. The protocol's {"error": "<message>"} prints."""
    url, tenant_key = server
    from tritonclient.utils import InferenceServerException

    infer_input = tritonclient_http.InferInput("input", shape, "FP32")
    infer_input.set_data_from_numpy(np.ones(shape, dtype=np.float32))
    authorization = key or f"Bearer {tenant_key}"
    with pytest.raises(InferenceServerException) as raised:
        _client(url).infer(model, [infer_input], headers={"Authorization": authorization})
    printed = str(raised.value)
    assert raised.value.status() == status
    assert printed.startswith(f"[{status}] ") and words in printed, printed
    assert "exception occurred in the client" not in printed


def test_metrics_count_requests_from_every_worker(tmp_path: Path) -> None:
    write_linear_model(tmp_path / "models", name="toy", n_features=4, n_classes=3)
    prom_dir = tmp_path / "prom"
    metrics_port = free_port()
    with live_server(
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        admin_token=ADMIN,
        workers=2,
        extra_env={
            "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
            "DYNANOISE_METRICS_PORT": str(metrics_port),
            "DYNANOISE_METRICS_TOKEN": METRICS_TOKEN,
        },
    ) as url:
        key = httpx.post(
            f"{url}/admin/tenants",
            json={"name": "multi"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ).json()["api_key"]
        n = 0
        # Fresh connections are accepted by whichever worker is free; send until
        # both workers have written samples (each worker writes its own file).
        while n < 600 and (n < 40 or len(_worker_pids(prom_dir)) < 2):
            with httpx.Client() as fresh:
                r = fresh.post(
                    f"{url}/v1/models/toy/predict",
                    json={"instances": [[1, 2, 3, 4]]},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert r.status_code == 200
            n += 1
        # The metrics listener (its own port, the token required), not the public port.
        assert httpx.get(f"{url}/metrics").status_code == 404
        text = httpx.get(
            f"http://127.0.0.1:{metrics_port}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        ).text
    assert len(_worker_pids(prom_dir)) == 2, "requests never reached the second worker"
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("dynanoise_requests_total{")
        and 'tenant="multi"' in line
        and 'code="200"' in line
    )
    assert total == n


def _worker_pids(prom_dir: Path) -> set[str]:
    return {p.stem.rsplit("_", 1)[1] for p in prom_dir.glob("counter_*.db")}
