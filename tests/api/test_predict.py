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


def test_temperature_flattens_the_answer(clean_harness: Harness) -> None:
    harness = clean_harness  # base_variance 0: temperature alone
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


def _centred_logits(probabilities: list[list[float]], temperature: float) -> np.ndarray:
    log_p = np.log(np.asarray(probabilities, dtype=np.float64))
    return temperature * (log_p - log_p.mean(axis=1, keepdims=True))


def test_keyed_answers_around_a_base_variance_change_do_not_give_the_logits(
    harness: Harness,
) -> None:
    """Issue 13: keyed draws reused across a base_variance change let one answer before
    and one after solve for the clean logits, c = (rho c1 - c2) / (rho - 1). The seeds
    are bound to the tenant's parameters: the solution misses by about the noise."""
    from ..onnx_factory import linear_logits

    key = harness.add_tenant(
        "keyed", noise_mode="keyed", base_variance=0.3, lambda_scale=0.0, temperature=2.0
    )
    rows = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32).tolist()

    def answer() -> list[list[float]]:
        status, body = _predict(harness, key, {"instances": rows})
        assert status == 200, body
        return [p["probabilities"] for p in body["predictions"]]

    before = answer()
    assert answer() == before  # unchanged parameters: the very same answers
    patched = harness.client.patch(
        "/admin/tenants/keyed", json={"base_variance": 0.6}, headers=harness.admin
    )
    assert patched.status_code == 200, patched.text
    after = answer()
    rho = np.sqrt(0.6 / 0.3)
    solved = (rho * _centred_logits(before, 2.0) - _centred_logits(after, 2.0)) / (rho - 1.0)
    clean = linear_logits(harness.settings.models_dir / "toy", np.array(rows, np.float32))
    clean = clean - clean.mean(axis=1, keepdims=True)
    # Reused draws: error ~1e-6 (float32 answers). New draws: ~ the noise, sigma0 ~ 0.55.
    assert np.abs(solved - clean).mean() > 0.2
    # Going back to the earlier parameters gives back the earlier answers, no new draws.
    harness.client.patch("/admin/tenants/keyed", json={"base_variance": 0.3}, headers=harness.admin)
    assert answer() == before


def test_a_stored_tenant_with_clean_outputs_is_refused_at_serve_time(harness: Harness) -> None:
    """A base_variance 0 tenant (e.g. created while DYNANOISE_ALLOW_CLEAN_OUTPUTS was
    set) is not served without the setting: 403, on every route, naming the setting."""
    from service.defense import DefenseParams
    from service.tenants import TenantStore

    with TenantStore(harness.settings.database_url) as store:
        _, key = store.create("clean", DefenseParams(base_variance=0.0, temperature=7.0))
    v2 = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    for path, body in (
        ("/v1/models/toy/predict", {"instances": [ROW]}),
        ("/v2/models/toy/infer", v2),
    ):
        response = harness.client.post(path, json=body, headers=bearer(key))
        assert response.status_code == 403, response.text
        assert response.headers["x-dynanoise-error-code"] == "clean_outputs_refused"
        error = response.json()["error"]
        message = error if path.startswith("/v2/") else error["message"]
        assert "DYNANOISE_ALLOW_CLEAN_OUTPUTS" in message
        assert "probabilities" not in response.json()


def test_clean_outputs_are_served_when_the_setting_allows_them(clean_harness: Harness) -> None:
    key = clean_harness.add_tenant("off", base_variance=0.0, temperature=1.0)
    status, body = _predict(clean_harness, key, {"instances": [ROW]})
    assert status == 200, body
