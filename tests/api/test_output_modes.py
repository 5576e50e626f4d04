"""The lossy output modes end to end: tenants in calibrated_label and coarse mode,
answered from the calibration block of the model's manifest, over v1 and v2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.defense import DefenseParams, OutputCalibration, OutputMode, sensitivity
from service.inference import DefenseContext, Predictor
from service.metrics import ServiceMetrics
from service.protocol import decode_v2_response, encode_v2_request
from service.runtime import OnnxClassifier
from service.runtime.manifest import MANIFEST_FILE
from service.runtime.session import ModelLoadError
from service.settings import Settings

from ..conftest import Harness, bearer
from ..onnx_factory import linear_logits, write_linear_model

CALIBRATED = "calibrated"
N_CLASSES = 3
N_FEATURES = 4


def _held_out_calibration(model_dir: Path) -> OutputCalibration:
    """Tables fitted on rows the model never saw, with true labels that disagree with
    the model's label now and then (so the tables are not one-hot)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, N_FEATURES)).astype(np.float32)
    logits = linear_logits(model_dir, x)
    labels = (logits + rng.gumbel(scale=2.0, size=logits.shape)).argmax(axis=1)
    return OutputCalibration.fit(logits, labels)


def _write_calibration(model_dir: Path, block: object) -> None:
    path = model_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["calibration"] = block
    path.write_text(json.dumps(manifest))


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """`toy` without a calibration, `calibrated` with one."""
    directory = tmp_path / "models"
    write_linear_model(directory, name="toy", n_features=N_FEATURES, n_classes=N_CLASSES, seed=0)
    model_dir = write_linear_model(
        directory, name=CALIBRATED, n_features=N_FEATURES, n_classes=N_CLASSES, seed=3
    )
    _write_calibration(model_dir, _held_out_calibration(model_dir).as_dict())
    return directory


@pytest.fixture
def calibration(models_dir: Path) -> OutputCalibration:
    """The tables as the server reads them from the manifest."""
    manifest = json.loads((models_dir / CALIBRATED / MANIFEST_FILE).read_text())
    return OutputCalibration.from_dict(manifest["calibration"])


@pytest.fixture(params=[True, False], ids=["fast-route", "fastapi-route"])
def harness(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Harness]:
    app = create_app(settings)
    app.fast_inference_routes = request.param  # type: ignore[attr-defined]
    with TestClient(app) as client:
        yield Harness(client, settings)


def _rows(seed: int, n: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=1.5, size=(n, N_FEATURES)).astype(np.float32)


def _clean_logits(models_dir: Path, rows: np.ndarray) -> np.ndarray:
    return linear_logits(models_dir / CALIBRATED, rows)


def _v1(h: Harness, key: str, rows: np.ndarray, model: str = CALIBRATED) -> np.ndarray:
    response = h.client.post(
        f"/v1/models/{model}/predict", json={"instances": rows.tolist()}, headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    for prediction in predictions:
        p = prediction["probabilities"]
        assert prediction["label"] == f"class_{int(np.argmax(p))}"
    return np.array([p["probabilities"] for p in predictions], dtype=np.float32)


def _v2_json(h: Harness, key: str, rows: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}
        ]
    }
    response = h.client.post(f"/v2/models/{CALIBRATED}/infer", json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def _v2_binary(h: Harness, key: str, rows: np.ndarray) -> np.ndarray:
    body, headers = encode_v2_request(rows, "input", datatype="FP32")
    response = h.client.post(
        f"/v2/models/{CALIBRATED}/infer", content=body, headers={**bearer(key), **headers}
    )
    assert response.status_code == 200, response.text
    return decode_v2_response(response.content, response.headers["Inference-Header-Content-Length"])


ANSWERS = {"v1": _v1, "v2-json": _v2_json, "v2-binary": _v2_binary}


# --- admin API ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "buckets"),
    [
        ({"output_mode": "calibrated_label"}, 4),
        ({"output_mode": "coarse", "confidence_buckets": 6}, 6),
    ],
)
def test_tenants_are_created_shown_and_listed_with_their_output_mode(
    harness: Harness, params: dict[str, object], buckets: int
) -> None:
    c, admin = harness.client, harness.admin
    created = c.post(
        "/admin/tenants",
        json={"name": "acme", **params, "repeated_queries_per_minute": 30},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    for shown in (created.json(), c.get("/admin/tenants/acme", headers=admin).json()):
        assert shown["output_mode"] == params["output_mode"]
        assert shown["confidence_buckets"] == buckets
        assert shown["repeated_queries_per_minute"] == 30.0
    (listed,) = c.get("/admin/tenants", headers=admin).json()
    assert listed["output_mode"] == params["output_mode"]


def test_default_tenant_is_dynanoise_with_four_buckets_and_no_repeat_cap(harness: Harness) -> None:
    created = harness.client.post("/admin/tenants", json={"name": "acme"}, headers=harness.admin)
    body = created.json()
    assert (body["output_mode"], body["confidence_buckets"]) == ("dynanoise", 4)
    assert body["repeated_queries_per_minute"] is None


def test_output_mode_and_buckets_are_updated(harness: Harness) -> None:
    c, admin = harness.client, harness.admin
    harness.add_tenant("acme")
    patched = c.patch(
        "/admin/tenants/acme",
        json={"output_mode": "coarse", "confidence_buckets": 2},
        headers=admin,
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["output_mode"], patched.json()["confidence_buckets"]) == ("coarse", 2)
    assert patched.json()["version"] == 2
    back = c.patch("/admin/tenants/acme", json={"output_mode": "dynanoise"}, headers=admin)
    assert back.json()["output_mode"] == "dynanoise"


@pytest.mark.parametrize(
    "bad",
    [
        {"confidence_buckets": 0},
        {"confidence_buckets": 9},
        {"confidence_buckets": 2.5},
        {"confidence_buckets": "many"},
        {"output_mode": "exact"},
        {"output_mode": None},
        {"repeated_queries_per_minute": 0},
        {"repeated_queries_per_minute": -3.0},
    ],
)
def test_invalid_output_parameters_are_422_on_create_and_update(
    harness: Harness, bad: dict[str, object]
) -> None:
    c, admin = harness.client, harness.admin
    refused = c.post("/admin/tenants", json={"name": "bad", **bad}, headers=admin)
    assert refused.status_code == 422, refused.text
    assert c.get("/admin/tenants/bad", headers=admin).status_code == 404
    harness.add_tenant("acme", output_mode="coarse")
    response = c.patch("/admin/tenants/acme", json=bad, headers=admin)
    assert response.status_code == 422, response.text
    unchanged = c.get("/admin/tenants/acme", headers=admin).json()
    assert (unchanged["output_mode"], unchanged["confidence_buckets"]) == ("coarse", 4)
    assert unchanged["repeated_queries_per_minute"] is None and unchanged["version"] == 1


def test_repeated_queries_per_minute_is_set_and_cleared(harness: Harness) -> None:
    c, admin = harness.client, harness.admin
    harness.add_tenant("acme")
    capped = c.patch("/admin/tenants/acme", json={"repeated_queries_per_minute": 12}, headers=admin)
    assert capped.status_code == 200 and capped.json()["repeated_queries_per_minute"] == 12.0
    cleared = c.patch(
        "/admin/tenants/acme", json={"repeated_queries_per_minute": None}, headers=admin
    )
    assert cleared.status_code == 200 and cleared.json()["repeated_queries_per_minute"] is None


# --- answers ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", list(ANSWERS))
def test_calibrated_label_answers_the_table_row_of_the_clean_label(
    harness: Harness, models_dir: Path, calibration: OutputCalibration, protocol: str
) -> None:
    key = harness.add_tenant("acme", output_mode="calibrated_label")
    rows = _rows(seed=1)
    answers = ANSWERS[protocol](harness, key, rows)
    label = _clean_logits(models_dir, rows).argmax(axis=1)
    assert len(set(label.tolist())) > 1  # the batch covers more than one label
    np.testing.assert_allclose(answers, calibration.tables[0][label, 0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(answers.argmax(axis=1), label)
    for value in set(label.tolist()):
        same = answers[label == value]
        np.testing.assert_array_equal(same, np.broadcast_to(same[0], same.shape))


@pytest.mark.parametrize("protocol", list(ANSWERS))
def test_coarse_answers_take_at_most_labels_times_buckets_values(
    harness: Harness, models_dir: Path, calibration: OutputCalibration, protocol: str
) -> None:
    buckets = 3
    key = harness.add_tenant("acme", output_mode="coarse", confidence_buckets=buckets)
    rows = np.concatenate([_rows(seed) for seed in range(10, 16)])
    answers = np.concatenate([ANSWERS[protocol](harness, key, part) for part in np.split(rows, 6)])
    logits = _clean_logits(models_dir, rows)
    np.testing.assert_array_equal(answers.argmax(axis=1), logits.argmax(axis=1))
    np.testing.assert_allclose(answers, calibration.answer(logits, buckets), rtol=1e-6, atol=1e-7)
    distinct = {tuple(row) for row in answers.tolist()}
    assert N_CLASSES < len(distinct) <= N_CLASSES * buckets


@pytest.mark.parametrize("mode", ["calibrated_label", "coarse"])
def test_asking_again_gives_the_identical_answer(harness: Harness, mode: str) -> None:
    key = harness.add_tenant("acme", output_mode=mode)
    rows = _rows(seed=2)
    first = _v1(harness, key, rows)
    np.testing.assert_array_equal(_v1(harness, key, rows), first)
    np.testing.assert_array_equal(_v2_binary(harness, key, rows), first)


@pytest.mark.parametrize("mode", ["calibrated_label", "coarse"])
def test_a_model_without_calibration_is_409_output_mode_unavailable(
    harness: Harness, mode: str
) -> None:
    key = harness.add_tenant("acme", output_mode=mode)
    rows = _rows(seed=3, n=2)
    responses = [
        harness.client.post(
            "/v1/models/toy/predict", json={"instances": rows.tolist()}, headers=bearer(key)
        ),
        harness.client.post(
            "/v2/models/toy/infer",
            json={
                "inputs": [
                    {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": rows.tolist()}
                ]
            },
            headers=bearer(key),
        ),
    ]
    for response in responses:
        assert response.status_code == 409, response.text
        assert response.headers["x-dynanoise-error-code"] == "output_mode_unavailable"
        error = orjson.loads(response.content)["error"]
        message = error if response.url.path.startswith("/v2/") else error["message"]
        assert "'toy'" in message and "calibration" in message
        assert "calibrate-outputs" in message
    # The calibrated model still answers, and a DynaNoise tenant still gets toy.
    assert _v1(harness, key, rows).shape == (2, N_CLASSES)
    plain = harness.add_tenant("plain")
    assert _v1(harness, plain, rows, model="toy").shape == (2, N_CLASSES)


def test_a_lossy_tenant_without_noise_is_created_and_served(
    harness: Harness, models_dir: Path, calibration: OutputCalibration
) -> None:
    """base_variance 0 is refused for DynaNoise (clean outputs), not for the lossy modes:
    their answers are a many-to-one view of the output."""
    key = harness.add_tenant("acme", base_variance=0.0, output_mode="coarse")
    rows = _rows(seed=6)
    expected = calibration.answer(_clean_logits(models_dir, rows), 4)
    np.testing.assert_allclose(_v1(harness, key, rows), expected, rtol=1e-6, atol=1e-7)


def test_dynanoise_tenants_are_not_answered_from_the_tables(
    harness: Harness, calibration: OutputCalibration, models_dir: Path
) -> None:
    key = harness.add_tenant("acme", noise_mode="keyed")
    rows = _rows(seed=4)
    answers = _v1(harness, key, rows)
    tables = calibration.answer(_clean_logits(models_dir, rows), calibration.max_buckets)
    assert not np.allclose(answers, tables, atol=1e-3)


# --- the predictor and the loaded model -------------------------------------------


def test_lossy_answers_draw_no_noise_and_record_clean_sensitivity(
    models_dir: Path, calibration: OutputCalibration
) -> None:
    metrics = ServiceMetrics()
    predictor = Predictor(metrics)
    model = OnnxClassifier.load(models_dir / CALIBRATED)
    params = DefenseParams(output_mode=OutputMode.COARSE, confidence_buckets=8)
    rows = _rows(seed=5)
    answers = predictor.predict(model, DefenseContext("acme", params, b"s" * 32), rows)
    logits = _clean_logits(models_dir, rows)
    np.testing.assert_allclose(answers, calibration.answer(logits, 8), rtol=1e-6)
    labels = {"model": CALIBRATED, "tenant": "acme"}
    sample = metrics.registry.get_sample_value
    assert sample("dynanoise_noise_std_count", labels) == len(rows)
    assert sample("dynanoise_noise_std_sum", labels) == 0.0
    assert sample("dynanoise_sensitivity_sum", labels) == pytest.approx(
        float(sensitivity(logits, params.sensitivity).sum()), rel=1e-4
    )
    assert not sample("dynanoise_label_flips_total", labels)


def test_the_loaded_model_carries_its_parsed_calibration(
    models_dir: Path, calibration: OutputCalibration
) -> None:
    loaded = OnnxClassifier.load(models_dir / CALIBRATED).calibration
    assert loaded is not None and loaded.n_classes == N_CLASSES
    assert loaded.max_buckets == calibration.max_buckets
    for ours, theirs in zip(loaded.tables, calibration.tables, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert OnnxClassifier.load(models_dir / "toy").calibration is None


def _bad_blocks(good: dict[str, object]) -> list[object]:
    return [
        {**good, "n_classes": 4},
        {k: v for k, v in good.items() if k != "tables"},
        {**good, "tables": good["tables"][:1]},  # type: ignore[index]
        {**good, "edges": [[0.9, 0.5]] * len(good["edges"])},  # type: ignore[arg-type]
        "not a block",
    ]


@pytest.mark.parametrize("case", range(5))
def test_a_bad_calibration_block_fails_the_load_with_one_line(models_dir: Path, case: int) -> None:
    model_dir = models_dir / CALIBRATED
    good = json.loads((model_dir / MANIFEST_FILE).read_text())["calibration"]
    _write_calibration(model_dir, _bad_blocks(good)[case])
    with pytest.raises(ModelLoadError) as failed:
        OnnxClassifier.load(model_dir)
    message = str(failed.value)
    assert "calibration" in message and "\n" not in message
