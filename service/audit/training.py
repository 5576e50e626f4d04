"""Train a target classifier on the paper's split, export it to ONNX, and write the
manifest the serving runtime reads (plus the split and the undefended leakage).

`train_and_export` is what `dynanoise train --dataset NAME --out models/NAME` calls;
with no options it reproduces the recipe stored in RECIPES for that data set.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from ..defense import OutputCalibration
from ..runtime.manifest import write_manifest
from .architectures import build_model
from .calibration import CALIBRATION_ROWS_NOTE, calibration_rows
from .datasets import Dataset, load_dataset
from .splits import Split, paper_split

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ONNX_FILE = "model.onnx"
VOCABULARY_FILE = "vocabulary.json"
ONNX_TOLERANCE = 1e-4
OPSET = 17

Optimizer = Literal["adam", "sgd"]


@dataclass(frozen=True)
class Recipe:
    """How a shipped model is trained: the defaults of `train_and_export`."""

    arch: str = "mlp"
    hidden: tuple[int, ...] = (256,)
    epochs: int = 60
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: Optimizer = "adam"
    max_members: int | None = None


# Chosen to overfit (train accuracy 1.0) so that membership leakage is real and
# measurable; each trains in well under two minutes on two CPU cores.
RECIPES: dict[str, Recipe] = {
    "digits": Recipe(hidden=(256,), epochs=300, max_members=100),
    "mnist5k": Recipe(hidden=(256,), epochs=200, max_members=300),
    "breast_cancer": Recipe(hidden=(128,), epochs=200, max_members=None),
    "thyroid": Recipe(hidden=(256, 256), epochs=60, max_members=None),
    "synthetic": Recipe(hidden=(256, 256), epochs=100, max_members=None),
    "cifar10": Recipe(arch="cnn", hidden=(32, 64), epochs=20),
    "imagenet10": Recipe(arch="cnn", hidden=(32, 64), epochs=20),
    "sst2": Recipe(arch="text", hidden=(64,), epochs=10, batch_size=128),
}


def _features(dataset: Dataset, rows: NDArray[np.int64]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(dataset.x[rows]))


def train_classifier(
    dataset: Dataset,
    indices: Sequence[int] | NDArray[np.int64],
    *,
    arch: str = "mlp",
    epochs: int = 60,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    hidden: Sequence[int] = (256,),
    optimizer: Optimizer = "adam",
    progress: bool = True,
) -> nn.Module:
    """Train `arch` on the rows `indices` of `dataset` with cross-entropy; returns the
    model in eval mode. Deterministic for a given seed: the initial weights and the
    batch order come from generators seeded with it (the global torch RNG is restored)."""
    rows = np.asarray(indices, dtype=np.int64)
    if len(rows) == 0:
        raise ValueError("no training rows")
    vocab_size = len(dataset.vocabulary) if dataset.vocabulary else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            arch, dataset.input_shape, dataset.n_classes, hidden=hidden, vocab_size=vocab_size
        )
    x = _features(dataset, rows)
    y = torch.from_numpy(dataset.y[rows])
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=lr, weight_decay=weight_decay
        )
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    loss_fn = nn.CrossEntropyLoss()
    order_rng = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(
        range(epochs), desc=f"train {dataset.name}/{arch}", disable=not progress, unit="epoch"
    )
    for _ in bar:
        total = 0.0
        for batch in torch.randperm(len(rows), generator=order_rng).split(batch_size):
            opt.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        bar.set_postfix(loss=f"{total / len(rows):.4f}")
    return model.eval()


def train_with_recipe(
    dataset: Dataset,
    indices: Sequence[int] | NDArray[np.int64],
    recipe: Recipe,
    *,
    seed: int,
    progress: bool = True,
) -> nn.Module:
    """`train_classifier` with the hyper-parameters of ``recipe`` (target and shadows alike)."""
    return train_classifier(
        dataset,
        indices,
        arch=recipe.arch,
        hidden=recipe.hidden,
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay,
        optimizer=recipe.optimizer,
        seed=seed,
        progress=progress,
    )


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: NDArray[Any], batch_size: int = 1024
) -> NDArray[np.float32]:
    """Logits of a torch model for inputs `x`, in batches."""
    model.eval()
    parts = [
        model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).numpy()
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


def onnx_logits(path: Path, x: NDArray[Any]) -> NDArray[np.float32]:
    """Logits of an exported model, through onnxruntime on CPU."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    return np.asarray(out, dtype=np.float32)


def export_onnx(
    model: nn.Module,
    path: Path,
    input_shape: Sequence[int],
    *,
    dtype: Literal["float32", "int64"] = "float32",
    vocab_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Export to ONNX (input `input`, output `logits`, dynamic batch axis) and check
    that onnxruntime's logits match torch's within 1e-4 on a random probe batch;
    int64 inputs (word ids) are probed with ids below `vocab_size`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (5, *input_shape)
    if dtype == "int64":
        probe = rng.integers(0, vocab_size or 2, size=shape).astype(np.int64)
    else:
        probe = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
    model.eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated, but needs no extra package (onnxscript).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.from_numpy(probe[:1]),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    gap = float(np.abs(onnx_logits(path, probe) - predict_logits(model, probe)).max())
    if gap > ONNX_TOLERANCE:
        raise RuntimeError(f"{path}: ONNX logits differ from torch by {gap:.2e} > {ONNX_TOLERANCE}")
    return path


def _log_softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def undefended_metrics(
    logits: NDArray[Any], y: NDArray[np.int64], split: Split
) -> dict[str, float]:
    """Accuracy and the paper's two threshold attacks on the undefended softmax.

    Confidence attack score: max_i p_i; loss attack score: -CE = log p_y. AUCs are on
    the balanced evaluation set (members positive); the *_attack_accuracy values use
    the paper's fixed rules (max p > 0.9; CE < 0.5)."""
    log_p = _log_softmax(np.asarray(logits, dtype=np.float64))
    confidence = np.exp(log_p.max(axis=1))
    log_p_true = log_p[np.arange(len(y)), y]
    correct = log_p.argmax(axis=1) == y
    eval_rows = np.concatenate([split.eval_members, split.eval_nonmembers])
    is_member = np.r_[np.ones(len(split.eval_members)), np.zeros(len(split.eval_nonmembers))]
    return {
        "train_accuracy": float(correct[split.target_members].mean()),
        "test_accuracy": float(correct[split.test].mean()),
        "undefended_confidence_auc": float(roc_auc_score(is_member, confidence[eval_rows])),
        "undefended_loss_auc": float(roc_auc_score(is_member, log_p_true[eval_rows])),
        "undefended_confidence_attack_accuracy": float(
            ((confidence[eval_rows] > 0.9) == is_member).mean()
        ),
        "undefended_loss_attack_accuracy": float(
            ((-log_p_true[eval_rows] < 0.5) == is_member).mean()
        ),
        "n_eval": len(eval_rows),
    }


# The serving runtime's rule for model names (service.runtime.manifest).
_MODEL_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")


def train_and_export(
    dataset_name: str,
    out_dir: Path,
    *,
    seed: int = 0,
    arch: str | None = None,
    hidden: Sequence[int] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    weight_decay: float | None = None,
    optimizer: Optimizer | None = None,
    max_members: int | None = None,
    test_fraction: float = 0.2,
    data_dir: Path | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    name: str | None = None,
    version: str = "1",
    progress: bool = True,
) -> dict[str, Any]:
    """Load `dataset_name`, split it (paper protocol, `seed`), train the target on the
    members, export out_dir/model.onnx, measure the undefended leakage on the exported
    model, and write out_dir/manifest.json. Options left as None take RECIPES' values;
    `dataset_options` go to `load_dataset` (e.g. `image_size`). The model is named
    `name`, else after out_dir (the server keys models by that name). Returns the manifest."""
    base = RECIPES.get(dataset_name, Recipe())
    recipe = Recipe(
        arch=arch or base.arch,
        hidden=tuple(hidden) if hidden is not None else base.hidden,
        epochs=epochs if epochs is not None else base.epochs,
        lr=lr if lr is not None else base.lr,
        batch_size=batch_size if batch_size is not None else base.batch_size,
        weight_decay=weight_decay if weight_decay is not None else base.weight_decay,
        optimizer=optimizer or base.optimizer,
        max_members=max_members if max_members is not None else base.max_members,
    )
    out_dir = Path(out_dir)
    model_name = name or out_dir.resolve().name
    if not _MODEL_NAME.fullmatch(model_name):
        raise ValueError(f"model name {model_name!r} must match {_MODEL_NAME.pattern}")
    options = dict(dataset_options or {})
    dataset = load_dataset(dataset_name, data_dir=data_dir, **options)
    split = paper_split(
        len(dataset),
        seed=seed,
        test_fraction=test_fraction,
        test_indices=dataset.test_indices,
        max_members=recipe.max_members,
    )
    model = train_with_recipe(dataset, split.target_members, recipe, seed=seed, progress=progress)
    dtype: Literal["float32", "int64"] = "int64" if dataset.kind == "text" else "float32"
    vocab_size = len(dataset.vocabulary) if dataset.vocabulary else None
    onnx_path = export_onnx(
        model,
        out_dir / ONNX_FILE,
        dataset.input_shape,
        dtype=dtype,
        vocab_size=vocab_size,
        seed=seed,
    )
    every_logit = onnx_logits(onnx_path, dataset.x)
    metrics = undefended_metrics(every_logit, dataset.y, split)
    held_out = calibration_rows(split, len(dataset))
    calibration = OutputCalibration.fit(every_logit[held_out], dataset.y[held_out])
    manifest: dict[str, Any] = {
        "name": model_name,
        "version": version,
        "file": ONNX_FILE,
        "input": {"name": INPUT_NAME, "shape": [-1, *dataset.input_shape], "dtype": dtype},
        "output": {"name": OUTPUT_NAME},
        "labels": list(dataset.labels),
        "description": f"{recipe.arch} trained on {dataset.description} (undefended; deliberately overfit)",
        "trained_on": {
            "dataset": dataset.name,
            "source": dataset.source,
            "n_samples": len(dataset),
            "preprocessing": dataset.preprocessing,
            "options": options,
        },
        "training": {
            "seed": seed,
            **asdict(recipe),
            "hidden": list(recipe.hidden),
            "test_fraction": test_fraction,
            "torch_version": torch.__version__,
        },
        "split": split.to_manifest(),
        "metrics": metrics,
        "calibration": calibration.as_dict(),
        "calibration_rows": CALIBRATION_ROWS_NOTE,
    }
    if dataset.vocabulary:
        (out_dir / VOCABULARY_FILE).write_text(
            json.dumps(dataset.vocabulary) + "\n", encoding="utf-8"
        )
        manifest["vocabulary_file"] = VOCABULARY_FILE
    write_manifest(out_dir, manifest)
    return manifest
