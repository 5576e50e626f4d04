"""Models the benchmark serves: the shipped default model, or linear stand-ins."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

DEFAULT_FILE = "DEFAULT"


def default_model_dir(models_dir: Path) -> Path | None:
    """``models/<name>`` named by ``models/DEFAULT``, or None when there is none."""
    marker = models_dir / DEFAULT_FILE
    if not marker.is_file():
        return None
    candidate = models_dir / marker.read_text().strip()
    return candidate if (candidate / "manifest.json").is_file() else None


def write_linear_model(
    directory: Path, *, name: str, n_features: int, n_classes: int, seed: int = 0
) -> Path:
    """A random linear classifier (logits = x W + b) with its manifest, under directory/name."""
    rng = np.random.default_rng(seed)
    weights = (rng.normal(size=(n_features, n_classes)) / np.sqrt(n_features)).astype(np.float32)
    bias = rng.normal(size=n_classes).astype(np.float32)
    return save_linear_model(
        directory / name,
        name=name,
        weights=weights,
        bias=bias,
        description=f"linear {n_features} -> {n_classes} benchmark model",
    )


def save_linear_model(
    model_dir: Path,
    *,
    name: str,
    weights: NDArray[np.float32],
    bias: NDArray[np.float32],
    description: str,
    version: str = "1",
) -> Path:
    """Write logits = x W + b as ``model.onnx`` plus its manifest into ``model_dir``.

    Needs the ``onnx`` package (the audit and dev extras), not torch.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_features, n_classes = weights.shape
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
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "model.onnx")
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "file": "model.onnx",
        "input": {"name": "input", "shape": [-1, n_features], "dtype": "float32"},
        "output": {"name": "logits"},
        "labels": [f"class_{i}" for i in range(n_classes)],
        "description": description,
    }
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return model_dir


def prepare_models(
    models_dir: Path,
    work_dir: Path,
    *,
    model: str | None = None,
    extra_features: tuple[int, ...] = (),
) -> tuple[Path, str]:
    """A models directory for the bench servers: ``models_dir/<model>`` when named,
    else the default model (copied), else a linear 784 -> 10 stand-in; plus linear
    models with ``extra_features`` inputs. Returns the directory and the main model's name."""
    served = work_dir / "models"
    if served.exists():
        shutil.rmtree(served)
    served.mkdir(parents=True)
    default = models_dir / model if model is not None else default_model_dir(models_dir)
    if default is not None:
        shutil.copytree(default, served / default.name)
        name = json.loads((default / "manifest.json").read_text())["name"]
    else:
        name = "linear784"
        write_linear_model(served, name=name, n_features=784, n_classes=10)
    for features in extra_features:
        write_linear_model(served, name=f"image{features}", n_features=features, n_classes=10)
    return served, str(name)
