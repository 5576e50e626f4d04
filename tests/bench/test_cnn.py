"""The benchmark's generated CNN: the service loads it, and a row's logits do not depend
on the batch it is run in (what merging requests relies on)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.harness.cnn import CNN_FEATURES, CNN_NAME, CnnShape, write_cnn_model
from service.runtime import OnnxClassifier

SMALL = CnnShape(conv1=4, conv2=4, conv3=8, hidden=16, classes=5)


def test_the_service_loads_the_cnn_with_a_flat_image_row(tmp_path: Path) -> None:
    model_dir = write_cnn_model(tmp_path, shape=SMALL)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["name"] == CNN_NAME
    assert manifest["input"]["shape"] == [-1, CNN_FEATURES] == [-1, 3 * 32 * 32]
    model = OnnxClassifier.load(model_dir)
    rows = np.random.default_rng(0).random((6, CNN_FEATURES), dtype=np.float32)
    logits = model.logits(model.validate(rows))
    assert logits.shape == (6, 5)
    assert np.isfinite(logits).all()
    assert np.ptp(logits, axis=0).max() > 0  # the rows are told apart


def test_a_rows_logits_do_not_depend_on_its_batch(tmp_path: Path) -> None:
    model = OnnxClassifier.load(write_cnn_model(tmp_path, shape=SMALL))
    rows = np.random.default_rng(1).random((8, CNN_FEATURES), dtype=np.float32)
    merged = model.logits(rows)
    alone = np.concatenate([model.logits(rows[i : i + 1]) for i in range(8)])
    np.testing.assert_allclose(merged, alone, rtol=1e-5, atol=1e-6)


def test_the_same_seed_writes_the_same_weights(tmp_path: Path) -> None:
    first = write_cnn_model(tmp_path / "a", shape=SMALL, seed=7) / "model.onnx"
    second = write_cnn_model(tmp_path / "b", shape=SMALL, seed=7) / "model.onnx"
    other = write_cnn_model(tmp_path / "c", shape=SMALL, seed=8) / "model.onnx"
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
