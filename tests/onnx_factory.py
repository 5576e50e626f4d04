"""Tiny ONNX classifiers written by tests, so serving tests need neither torch nor
the shipped models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.harness.models import save_linear_model


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
    """A linear classifier logits = x W + b saved with its manifest under directory/name;
    the weights are kept in weights.npz so tests can compute the clean logits."""
    rng = np.random.default_rng(seed)
    weights = (scale * rng.normal(size=(n_features, n_classes))).astype(np.float32)
    bias = rng.normal(size=n_classes).astype(np.float32)
    model_dir = save_linear_model(
        directory / name,
        name=name,
        weights=weights,
        bias=bias,
        description="linear test model",
        version=version,
    )
    np.savez(model_dir / "weights.npz", W=weights, b=bias)
    return model_dir


def linear_logits(model_dir: Path, x: np.ndarray) -> np.ndarray:
    w = np.load(model_dir / "weights.npz")
    return x.astype(np.float32) @ w["W"] + w["b"]
