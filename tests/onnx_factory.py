"""Tiny ONNX classifiers written by tests, so serving tests need neither torch nor
the shipped models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_linear_model(
    directory: Path,
    *,
    name: str = "toy",
    n_features: int = 4,
    n_classes: int = 3,
    seed: int = 0,
    scale: float = 3.0,
    version: str = "1",
) -> Path:
    """A linear classifier logits = x W + b saved with its manifest under directory/name."""
    rng = np.random.default_rng(seed)
    weights = (scale * rng.normal(size=(n_features, n_classes))).astype(np.float32)
    bias = rng.normal(size=n_classes).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
        ],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model_dir = directory / name
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "model.onnx")
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "file": "model.onnx",
        "input": {"name": "input", "shape": [-1, n_features], "dtype": "float32"},
        "output": {"name": "logits"},
        "labels": [f"class_{i}" for i in range(n_classes)],
        "description": "linear test model",
    }
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    np.savez(model_dir / "weights.npz", W=weights, b=bias)
    return model_dir


def linear_logits(model_dir: Path, x: np.ndarray) -> np.ndarray:
    w = np.load(model_dir / "weights.npz")
    return x.astype(np.float32) @ w["W"] + w["b"]
