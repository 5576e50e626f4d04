"""Property tests of the defense and of what the API lets out.

1. For any finite logits (extremes included) and valid parameters, every path of the
   defense (few rows in Python floats, class-major, row-major with an ensemble) gives
   finite, non-negative probabilities whose rows sum to 1; keyed noise is a pure
   function of (secret, model, input).
2. Through the API: the clean logits of the linear test model, and their clean
   softmax, never appear in any response (v1 JSON, v2 JSON, v2 binary).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import SecretStr

from service.app import create_app
from service.defense import (
    MAX_ENSEMBLE_SIZE,
    DefenseParams,
    NoiseMode,
    Sensitivity,
    defend,
)
from service.settings import Settings

from ..conftest import ADMIN_TOKEN, bearer
from ..onnx_factory import linear_logits, write_linear_model

FLOAT32_MAX = float(np.finfo(np.float32).max)
EXTREMES = [0.0, -0.0, 1e4, -1e4, FLOAT32_MAX, -FLOAT32_MAX, 1e-30, 88.7, -745.0]

# --- the defense on its own --------------------------------------------------------


def _logits(min_classes: int = 2, max_classes: int = 80) -> st.SearchStrategy[np.ndarray]:
    """(n, k) float32-representable logits, biased towards the extremes."""
    element = st.one_of(
        st.sampled_from(EXTREMES),
        st.floats(-1e4, 1e4, width=32),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
    )
    shape = st.tuples(
        st.integers(1, 24), st.integers(min_classes, max_classes)
    )  # spans all three code paths: n*k <= 40, k <= 64, k > 64
    return shape.flatmap(lambda s: hnp.arrays(np.float64, s, elements=element))


def _params(
    temperature: st.SearchStrategy[float], base_variance: st.SearchStrategy[float]
) -> st.SearchStrategy[DefenseParams]:
    return st.builds(
        DefenseParams,
        base_variance=st.one_of(st.just(0.0), base_variance),
        lambda_scale=st.one_of(st.just(0.0), st.floats(0.0, 1e3)),
        temperature=temperature,
        ensemble_size=st.one_of(st.just(1), st.integers(1, 8), st.just(MAX_ENSEMBLE_SIZE)),
        sensitivity=st.sampled_from(list(Sensitivity)),
        noise_mode=st.sampled_from(list(NoiseMode)),
    )


ORDINARY_PARAMS = _params(temperature=st.floats(1e-2, 1e4), base_variance=st.floats(0.0, 1e4))
# Valid by the spec (T > 0, sigma0^2 >= 0, finite) but far outside any sensible setting.
EXTREME_PARAMS = _params(
    temperature=st.floats(min_value=5e-324, max_value=1e-200),
    base_variance=st.floats(1e300, 1e308),
)


def _run(logits: np.ndarray, params: DefenseParams, seed: int) -> np.ndarray:
    inputs = np.arange(logits.shape[0] * 3, dtype=np.float32).reshape(logits.shape[0], 3)
    with np.errstate(all="ignore"):
        out = defend(
            logits,
            params,
            rng=np.random.default_rng(seed),
            secret=b"s" * 32,
            model_id="toy@1",
            inputs=inputs,
        )
    return out.probabilities


def _assert_distribution(probabilities: np.ndarray, shape: tuple[int, ...]) -> None:
    assert probabilities.shape == shape
    assert np.isfinite(probabilities).all()
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1, dtype=np.float64), 1.0, atol=1e-5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logits=_logits(), params=ORDINARY_PARAMS, seed=st.integers(0, 2**32 - 1))
def test_output_is_a_finite_distribution_for_any_finite_logits(
    logits: np.ndarray, params: DefenseParams, seed: int
) -> None:
    _assert_distribution(_run(logits, params, seed), logits.shape)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(logits=_logits(max_classes=8), params=EXTREME_PARAMS, seed=st.integers(0, 2**32 - 1))
def test_output_stays_finite_for_extreme_but_valid_parameters(
    logits: np.ndarray, params: DefenseParams, seed: int
) -> None:
    _assert_distribution(_run(logits, params, seed), logits.shape)


@settings(max_examples=100, deadline=None)
@given(
    logits=_logits(),
    params=ORDINARY_PARAMS.map(
        lambda p: DefenseParams(
            base_variance=max(p.base_variance, 0.1),
            lambda_scale=p.lambda_scale,
            temperature=p.temperature,
            ensemble_size=p.ensemble_size,
            sensitivity=p.sensitivity,
            noise_mode=NoiseMode.KEYED,
        )
    ),
    seeds=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)
def test_keyed_noise_is_deterministic_whatever_the_generator(
    logits: np.ndarray, params: DefenseParams, seeds: tuple[int, int]
) -> None:
    first, second = (_run(logits, params, seed) for seed in seeds)
    np.testing.assert_array_equal(first, second)


@settings(max_examples=60, deadline=None)
@given(
    rows=hnp.arrays(np.float32, (10, 5), elements=st.floats(-50, 50, width=32)),
    params=ORDINARY_PARAMS.filter(lambda p: p.base_variance > 0).map(
        lambda p: DefenseParams(
            base_variance=p.base_variance,
            temperature=p.temperature,
            ensemble_size=p.ensemble_size,
            sensitivity=p.sensitivity,
            noise_mode=NoiseMode.KEYED,
        )
    ),
)
def test_keyed_answer_of_a_row_does_not_depend_on_its_batch(
    rows: np.ndarray, params: DefenseParams
) -> None:
    """A row alone and the same row inside a batch (another code path) agree."""
    logits = rows.astype(np.float64)
    with np.errstate(all="ignore"):
        batch = defend(logits, params, secret=b"k" * 32, model_id="m@1", inputs=rows)
        alone = defend(logits[2:3], params, secret=b"k" * 32, model_id="m@1", inputs=rows[2:3])
    np.testing.assert_allclose(batch.probabilities[2], alone.probabilities[0], rtol=1e-5, atol=1e-7)


# --- through the API: the clean logits never leave ------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path, dict]]:
    base = tmp_path_factory.mktemp("leak")
    models = base / "models"
    model_dir = write_linear_model(models, name="toy", n_features=4, n_classes=3, seed=0)
    app_settings = Settings(
        database_url=f"sqlite:///{base / 'tenants.db'}",
        models_dir=models,
        admin_token=SecretStr(ADMIN_TOKEN),
        max_batch=16,
        tenant_cache_seconds=60.0,
    )
    with TestClient(create_app(app_settings)) as client:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        keys: dict[str, str] = {}
        tenants: dict[str, dict[str, object]] = {
            "paper": {},
            "keyed": {"noise_mode": "keyed"},
            "smooth": {"base_variance": 0.05, "temperature": 2.0, "ensemble_size": 4},
        }
        for name, params in tenants.items():
            response = client.post("/admin/tenants", json={"name": name, **params}, headers=admin)
            keys[name] = response.json()["api_key"]
        yield client, model_dir, keys


def _clean(model_dir: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = linear_logits(model_dir, x).astype(np.float32)
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return logits, (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _telling(values: np.ndarray) -> list[np.float32]:
    # 0 and 1 say nothing (and a saturated answer is 0/1 whatever the defense).
    return [v for v in np.asarray(values, dtype=np.float32).ravel() if v not in (0.0, 1.0)]


def _assert_nothing_clean(
    body: bytes, numbers: np.ndarray, logits: np.ndarray, softmax: np.ndarray
) -> None:
    tokens = set(NUMBER.findall(body.decode(errors="replace")))
    returned = {np.float32(v) for v in numbers.ravel()}
    for value in _telling(logits):
        assert value not in returned, f"clean logit {value} in the response"
        assert value.tobytes() not in body, f"bytes of clean logit {value} in the response"
        assert not {str(value), repr(float(value))} & tokens, f"clean logit {value} written out"
    for value in _telling(softmax):
        assert value not in returned, f"clean probability {value} in the response"
        assert value.tobytes() not in body
    # Row by row, where the clean softmax is not saturated (a one-hot answer is one-hot
    # with or without the defense).
    answered = numbers.reshape(softmax.shape)
    for row, clean in zip(answered, softmax, strict=True):
        if clean.max() < 0.999:
            assert not np.allclose(row, clean, atol=1e-6), "the clean softmax came back"


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
INPUTS = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 4), st.just(4)),
    elements=st.one_of(
        st.floats(-1, 1, width=32),
        st.floats(-100, 100, width=32),
        st.sampled_from([0.0, 1.0, -1.0]),
    ),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(x=INPUTS, tenant=st.sampled_from(["paper", "keyed", "smooth"]), how=st.integers(0, 2))
def test_clean_logits_and_softmax_never_leave_the_service(
    api: tuple[TestClient, Path, dict], x: np.ndarray, tenant: str, how: int
) -> None:
    client, model_dir, keys = api
    logits, softmax = _clean(model_dir, x)
    assume(np.isfinite(logits).all())
    headers = bearer(keys[tenant])
    if how == 0:
        response = client.post(
            "/v1/models/toy/predict", json={"instances": x.tolist()}, headers=headers
        )
        assert response.status_code == 200, response.text
        numbers = np.array([p["probabilities"] for p in response.json()["predictions"]])
    else:
        binary = how == 2
        request = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ],
            "parameters": {"binary_data_output": binary},
        }
        response = client.post("/v2/models/toy/infer", json=request, headers=headers)
        assert response.status_code == 200, response.text
        if binary:
            header_length = int(response.headers["inference-header-content-length"])
            header = json.loads(response.content[:header_length])
            assert "data" not in header["outputs"][0]
            numbers = np.frombuffer(response.content[header_length:], dtype="<f4")
        else:
            numbers = np.array(response.json()["outputs"][0]["data"], dtype=np.float32)
    _assert_nothing_clean(response.content, numbers, logits, softmax)


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 5e-324},
        {"base_variance": 1e308},
        {"base_variance": 1e308, "ensemble_size": 3},
    ],
)
def test_extreme_valid_parameters_never_put_null_in_an_answer(
    api: tuple[TestClient, Path, dict], params: dict
) -> None:
    client, _, _ = api
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    name = "extreme-" + "-".join(
        f"{k}{v}".replace(".", "").replace("+", "") for k, v in params.items()
    )
    created = client.post(
        "/admin/tenants", json={"name": name[:60].lower(), **params}, headers=admin
    )
    assert created.status_code == 201, created.text
    response = client.post(
        "/v1/models/toy/predict",
        json={"instances": [[0.5, -1.0, 2.0, 0.25]]},
        headers=bearer(created.json()["api_key"]),
    )
    # Either a clean refusal or finite probabilities; never a 200 carrying nulls.
    if response.status_code == 200:
        for prediction in response.json()["predictions"]:
            assert all(isinstance(p, float) for p in prediction["probabilities"])
    else:
        assert response.status_code == 422, response.text
