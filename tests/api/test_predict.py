"""Predict endpoints through the app: answers, defense parameters, and every bad input."""

from __future__ import annotations

import gzip
import math

import numpy as np
import orjson
import pytest

from ..conftest import Harness, bearer

ROW = [0.5, -1.0, 2.0, 0.25]


def _predict(h: Harness, key: str, body: object, model: str = "toy") -> tuple[int, dict]:
    response = h.client.post(f"/v1/models/{model}/predict", json=body, headers=bearer(key))
    return response.status_code, response.json()


def test_v1_returns_defended_probabilities(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    status, body = _predict(harness, key, {"instances": [ROW, ROW]})
    assert status == 200
    assert body["model"] == "toy" and body["model_version"] == "1"
    assert len(body["predictions"]) == 2
    for prediction in body["predictions"]:
        p = np.array(prediction["probabilities"])
        assert p.shape == (3,) and np.all(p > 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-5)
        assert prediction["label"] == f"class_{p.argmax()}"


def test_temperature_flattens_the_answer(harness: Harness) -> None:
    sharp = harness.add_tenant("sharp", base_variance=0.0, temperature=0.5)
    smooth = harness.add_tenant("smooth", base_variance=0.0, temperature=50.0)
    p_sharp = np.array(
        _predict(harness, sharp, {"instances": [ROW]})[1]["predictions"][0]["probabilities"]
    )
    p_smooth = np.array(
        _predict(harness, smooth, {"instances": [ROW]})[1]["predictions"][0]["probabilities"]
    )
    assert p_sharp.argmax() == p_smooth.argmax()
    assert p_sharp.max() > p_smooth.max()
    assert p_smooth.max() - p_smooth.min() < 0.1


def test_keyed_tenant_repeats_and_fresh_tenant_does_not(harness: Harness) -> None:
    keyed = harness.add_tenant("keyed", noise_mode="keyed", base_variance=2.0)
    fresh = harness.add_tenant("fresh", noise_mode="fresh", base_variance=2.0)
    body = {"instances": [ROW]}
    assert _predict(harness, keyed, body)[1] == _predict(harness, keyed, body)[1]
    assert _predict(harness, fresh, body)[1] != _predict(harness, fresh, body)[1]


def test_v1_accepts_gzip_bodies(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    response = harness.client.post(
        "/v1/models/toy/predict",
        content=gzip.compress(orjson.dumps({"instances": [ROW]})),
        headers={**bearer(key), "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b'{"instances": [[1, 2, 3, NaN]]}', 400),
        (b'{"instances": [[1, 2, 3, Infinity]]}', 400),
        (b"[]", 422),
        (b'{"rows": []}', 422),
        (b'{"instances": "abc"}', 422),
        (b'{"instances": []}', 422),
        (b'{"instances": [[1, 2, 3]]}', 422),
        (b'{"instances": [[1, 2, 3, 4], [1, 2]]}', 422),
        (b'{"instances": [[1, 2, 3, "x"]]}', 422),
        (b'{"instances": [[true, false, true, true]]}', 422),
        (b'{"instances": [[1, 2, 3, null]]}', 422),
        (b'{"instances": [[1, 2, 3, 1e39]]}', 422),
        (b'{"instances": [[[1, 2, 3, 4]]]}', 422),
        (orjson.dumps({"instances": [ROW] * 17}), 422),
    ],
)
def test_bad_v1_bodies_get_4xx_json(harness: Harness, body: bytes, status: int) -> None:
    key = harness.add_tenant("acme")
    response = harness.client.post(
        "/v1/models/toy/predict",
        content=body,
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]


def test_oversized_body_gets_413(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    body = b'{"instances": [' + b"[1,2,3,4]," * 10_000 + b"[1,2,3,4]]}"
    response = harness.client.post(
        "/v1/models/toy/predict",
        content=body,
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_gzip_bomb_gets_413(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    bomb = gzip.compress(b" " * (10 * 1024 * 1024))
    response = harness.client.post(
        "/v1/models/toy/predict",
        content=bomb,
        headers={**bearer(key), "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def test_unknown_model_is_404(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    assert _predict(harness, key, {"instances": [ROW]}, model="nope")[0] == 404


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer nope", "Bearer dn_abc_def", "Basic abc"]
)
def test_missing_or_bad_key_is_401(harness: Harness, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = harness.client.post(
        "/v1/models/toy/predict", json={"instances": [ROW]}, headers=headers
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_model_not_allowed_is_403(harness: Harness) -> None:
    key = harness.add_tenant("narrow", allowed_models=["wide"])
    assert _predict(harness, key, {"instances": [ROW]}, model="toy")[0] == 403
    assert _predict(harness, key, {"instances": [[0.0] * 6]}, model="wide")[0] == 200


def test_extreme_but_finite_inputs_never_give_non_finite_output(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    big = 3.0e38
    status, body = _predict(harness, key, {"instances": [[big, -big, big, -big], [1e30, 0, 0, 0]]})
    if status == 200:
        for prediction in body["predictions"]:
            assert all(math.isfinite(v) for v in prediction["probabilities"])
    else:
        assert status == 422


def test_responses_never_contain_clean_probabilities(harness: Harness, models_dir) -> None:  # type: ignore[no-untyped-def]
    from ..onnx_factory import linear_logits

    key = harness.add_tenant("acme")  # paper defaults: T = 10, noise on
    x = np.array([ROW], dtype=np.float32)
    z = linear_logits(models_dir / "toy", x)[0].astype(np.float64)
    clean = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    p = np.array(_predict(harness, key, {"instances": [ROW]})[1]["predictions"][0]["probabilities"])
    assert not np.allclose(p, clean, atol=1e-3)
    raw = harness.client.post(
        "/v1/models/toy/predict", json={"instances": [ROW]}, headers=bearer(key)
    ).text
    for value in z:
        assert f"{value:.4f}"[:6] not in raw
