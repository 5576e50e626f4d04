"""Fixtures of the runtime tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.runtime import OnnxClassifier

from ..onnx_factory import write_linear_model


@pytest.fixture
def linear_model(tmp_path: Path) -> tuple[OnnxClassifier, Path]:
    model_dir = write_linear_model(tmp_path, name="lin", n_features=8, n_classes=5, seed=3)
    return OnnxClassifier.load(model_dir), model_dir
