"""What runs on the event loop is decided by the work a request can ask for (rows x
ensemble x classes), not by its body size alone: 1,000 UINT8 rows fit the inline body
limit, but at ensemble_size 64 they go to the thread pool."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import inference
from service.app import create_app
from service.protocol import encode_v2_request
from service.serving import DataPlane, InferenceCall
from service.serving.codecs import CODECS
from service.settings import Settings

from ..conftest import ADMIN_TOKEN, bearer
from ..onnx_factory import write_linear_model

FEATURES, CLASSES = 64, 10
INFER = "/v2/models/digits/infer"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    write_linear_model(tmp_path / "models", name="digits", n_features=FEATURES, n_classes=CLASSES)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'tenants.db'}",
        models_dir=tmp_path / "models",
        admin_token=ADMIN_TOKEN,
        max_batch=1024,
        tenant_cache_seconds=60.0,  # cached tenants: requests may run inline
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _tenant(client: TestClient, name: str, ensemble_size: int) -> str:
    created = client.post(
        "/admin/tenants",
        json={"name": name, "ensemble_size": ensemble_size},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert created.status_code == 201, created.text
    key: str = created.json()["api_key"]
    return key


def _uint8_rows(rows: int) -> tuple[bytes, dict[str, str]]:
    x = np.random.default_rng(0).integers(0, 17, size=(rows, FEATURES), dtype=np.uint8)
    return encode_v2_request(x, "input", datatype="UINT8")


@pytest.fixture
def pooled(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The calls the inference route sends to the thread pool."""
    calls: list[Any] = []
    original = inference.run_in_threadpool

    async def recording(function: Any, *args: Any) -> Any:
        calls.append(args)
        return await original(function, *args)

    monkeypatch.setattr(inference, "run_in_threadpool", recording)
    return calls


@pytest.mark.parametrize(
    ("ensemble_size", "rows", "inline"),
    [(64, 1000, False), (64, 1, True), (1, 100, True), (8, 1000, False)],
)
def test_requests_run_inline_only_when_cheap(
    client: TestClient, pooled: list[Any], ensemble_size: int, rows: int, inline: bool
) -> None:
    key = _tenant(client, "t", ensemble_size)
    body, headers = _uint8_rows(rows)
    assert len(body) <= client.app.state.services.settings.inline_max_body_bytes  # type: ignore[attr-defined]
    first = client.post(INFER, content=body, headers={**bearer(key), **headers})
    assert first.status_code == 200, first.text  # and the tenant is now cached
    pooled.clear()
    again = client.post(INFER, content=body, headers={**bearer(key), **headers})
    assert again.status_code == 200
    assert (not pooled) == inline


def _call(body: bytes, headers: dict[str, str], key: str) -> InferenceCall:
    return InferenceCall(CODECS["v2"], "digits", None, key, body, headers)


def test_the_bound_counts_rows_ensemble_and_classes(client: TestClient) -> None:
    plane: DataPlane = client.app.state.dataplane  # type: ignore[attr-defined]
    key = _tenant(client, "t", 64)
    body, headers = _uint8_rows(1)
    assert client.post(INFER, content=body, headers={**bearer(key), **headers}).status_code == 200
    assert plane.cached_tenant(_call(body, headers, key), 0.0) is not None

    compressed = {**headers, "content-encoding": "gzip"}  # rows bounded by max_batch only
    assert plane.cached_tenant(_call(gzip.compress(body), compressed, key), 0.0) is None
    assert plane.cached_tenant(_call(*_uint8_rows(1000), key), 0.0) is None
    cheap = plane.services.settings.model_copy(update={"inline_max_noise_draws": 10**9})
    plane.services.settings = cheap
    assert plane.cached_tenant(_call(*_uint8_rows(1000), key), 0.0) is not None
