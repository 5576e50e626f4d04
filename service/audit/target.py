"""The audited model and what the auditor knows of it, loaded from its model directory.

The manifest holds the split and the training recipe; the data set is loaded again
and the split checked against it, so the attacker's rows are the paper's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..defense import OutputCalibration
from ..runtime import OnnxClassifier
from .calibration import calibration_rows, fit_calibration
from .config import AuditConfig
from .datasets import Dataset, load_dataset
from .splits import Split, check_disjoint
from .training import RECIPES, Recipe


@dataclass(frozen=True, eq=False)
class AuditTarget:
    """The audited model and what the auditor knows of it (manifest, data, split)."""

    manifest: dict[str, Any]
    dataset: Dataset
    options: dict[str, Any]
    split: Split
    recipe: Recipe
    model: OnnxClassifier


def load_target(config: AuditConfig, model_dir: Path) -> AuditTarget:
    """The model and its data, with the split checked against the data at run time."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    trained_on = manifest.get("trained_on", {})
    dataset_name = trained_on.get("dataset", config.dataset)
    options = {**trained_on.get("options", {}), **config.dataset_options}
    dataset = load_dataset(dataset_name, data_dir=config.data_dir, **options)
    expected = trained_on.get("n_samples")
    if expected is not None and int(expected) != len(dataset):
        raise ValueError(
            f"the manifest says the model was trained on {expected} rows of {dataset_name}, "
            f"the data set loaded here has {len(dataset)}: not the same data"
        )
    split = Split.from_manifest(manifest["split"])
    check_disjoint(split, len(dataset))
    return AuditTarget(
        manifest,
        dataset,
        options,
        split,
        _recipe(manifest, dataset_name, config.epochs),
        OnnxClassifier.load(model_dir),
    )


def _recipe(manifest: dict[str, Any], dataset: str, epochs: int | None) -> Recipe:
    base = RECIPES.get(dataset, Recipe())
    training = manifest.get("training", {})
    known = {k: training[k] for k in asdict(base) if k in training}
    if "hidden" in known:
        known["hidden"] = tuple(known["hidden"])
    recipe = replace(base, **known)
    return replace(recipe, epochs=epochs) if epochs is not None else recipe


def target_calibration(target: AuditTarget) -> OutputCalibration:
    """What the server would answer from: the manifest's block, else a fit on
    ``calibration_rows``."""
    block = target.manifest.get("calibration")
    if block:
        return OutputCalibration.from_dict(block)
    model = target.model
    rows = calibration_rows(target.split, len(target.dataset))
    return fit_calibration(
        lambda x: model.logits(model.validate(np.asarray(x))), target.dataset, rows
    )
