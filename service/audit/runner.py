"""Run a whole privacy audit: target, shadows, every defense under every protocol.

The target is either trained here (`train_and_export`, the same code as
`dynanoise train`) and queried in process, or a live deployment queried over
HTTP whose model directory (manifest with the split) the auditor holds. Either
way the attacks see only ``Oracle.query`` answers; the shadows are the
attacker's own models, trained with the target's recipe.
"""

from __future__ import annotations

import platform
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..defense import DefenseParams
from .config import AuditConfig, HttpTarget
from .defenses import BASELINE, DefenseFactory, mean_sensitivity, needs_calibration
from .evaluation import audit_oracle, run_adaptive_protocol, run_paper_protocol
from .oracle import HttpOracle
from .rows import rows_of
from .splits import Split
from .target import AuditTarget, load_target, target_calibration
from .training import Recipe, train_and_export
from .utility import utility_report

SCHEMA_VERSION = 2


@dataclass
class AuditOutcome:
    """results: plain data for results.json; rocs[protocol][defense][attack] = (fpr, tpr)."""

    results: dict[str, Any]
    rocs: dict[str, dict[str, dict[str, tuple[list[float], list[float]]]]]


def run_audit(
    config: AuditConfig,
    *,
    model_dir: Path | None = None,
    http: HttpTarget | None = None,
    progress: bool = True,
    command: str = "",
) -> AuditOutcome:
    """Train (or load) the target and the attacker's models, then attack every defense.

    With ``model_dir`` the target is that exported model (its manifest holds the
    split and the training recipe); otherwise one is trained on ``config.dataset``.
    With ``http`` the audited defense is the deployment's ("served"), queried over
    HTTP; the in-process defenses named in ``config.defenses`` run beside it.
    """
    with tempfile.TemporaryDirectory(prefix="dynanoise-audit-") as scratch:
        if model_dir is None:
            if http is not None:
                raise ValueError("an HTTP audit needs the served model's directory (manifest)")
            model_dir = Path(scratch) / config.dataset
            _train_target(config, model_dir, progress)
        return _audit(config, Path(model_dir), http, progress, command)


def _train_target(config: AuditConfig, model_dir: Path, progress: bool) -> None:
    train_and_export(
        config.dataset,
        model_dir,
        seed=config.seed,
        epochs=config.epochs,
        max_members=config.max_members,
        data_dir=config.data_dir,
        dataset_options=config.dataset_options,
        progress=progress,
    )


def _audit(
    config: AuditConfig, model_dir: Path, http: HttpTarget | None, progress: bool, command: str
) -> AuditOutcome:
    target = load_target(config, model_dir)
    dataset, split, model = target.dataset, target.split, target.model
    test = rows_of(dataset, split.test)
    clean_logits = model.logits(model.validate(test.x))
    factory = DefenseFactory(
        (BASELINE, *config.defenses),
        config.params,
        mean_sensitivity(clean_logits, config.params),
        model.model_id,
        config.seed,
        http.params if http is not None else None,
    )
    if needs_calibration(factory):
        factory = replace(factory, calibrations={model.model_id: target_calibration(target)})
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "config": _config_record(config, target.recipe),
        "dataset": {
            "name": dataset.name,
            "n_samples": len(dataset),
            "n_classes": dataset.n_classes,
            "description": dataset.description,
            "options": target.options,
        },
        "split": _split_record(split),
        "target": _target_record(target.manifest, model.model_id, http),
        "defenses": {
            d.name: {"description": d.description, "parameters": d.parameters()}
            for d in factory.all(0)
        },
        "results": {name: {} for name in factory.names},
        "worst_case": {name: {} for name in factory.names},
    }
    rocs: dict[str, Any] = {}
    if "paper" in config.protocols:
        paper = run_paper_protocol(config, target, factory, http, progress)
        results["utility"] = paper.utility
        for name, block in paper.blocks.items():
            results["results"][name]["paper"] = block
            results["worst_case"][name]["paper"] = paper.worst_case[name]
        results["split"]["sizes"]["shadow_train"] = paper.shadow_rows
        rocs["paper"] = paper.rocs
    else:
        results["utility"] = _utility_once(target, factory, http)
    if "defense-aware" in config.protocols:
        aware = run_adaptive_protocol(config, target, factory, http, progress)
        for name, block in aware.blocks.items():
            results["results"][name]["defense-aware"] = block
            results["worst_case"][name]["defense-aware"] = block["worst_case"]
        results["query_budget"] = aware.query_budget
        results["evaluation"] = aware.evaluation
        results["label_only"] = aware.label_only
    return AuditOutcome(results, rocs)


def _utility_once(
    target: AuditTarget, factory: DefenseFactory, http: HttpTarget | None
) -> dict[str, dict[str, float]]:
    test = rows_of(target.dataset, target.split.test)
    out = {}
    for name in factory.names:
        oracle = audit_oracle(factory, name, 0, target, http, 0)
        try:
            out[name] = utility_report(oracle.query(test.x), test.y)
        finally:
            if isinstance(oracle, HttpOracle):
                oracle.close()
    return out


def _split_record(split: Split) -> dict[str, Any]:
    return {
        "seed": split.seed,
        "hash": split.split_hash,
        "sizes": {
            "members": len(split.target_members),
            "non_members": len(split.target_nonmembers),
            "shadow_in": len(split.shadow_in),
            "shadow_out": len(split.shadow_out),
            "test": len(split.test),
            "eval_members": len(split.eval_members),
            "eval_non_members": len(split.eval_nonmembers),
        },
    }


def _config_record(config: AuditConfig, recipe: Recipe) -> dict[str, Any]:
    record = asdict(config)
    record["params"] = _plain(config.params)
    record["data_dir"] = str(config.data_dir) if config.data_dir else None
    record["recipe"] = {**asdict(recipe), "hidden": list(recipe.hidden)}
    return record


def _target_record(
    manifest: dict[str, Any], model_id: str, http: HttpTarget | None
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "model_id": model_id,
        "source": "http" if http else "in-process",
        "metrics_at_training": manifest.get("metrics", {}),
    }
    if http is not None:
        record.update(endpoint=http.base_url, api=http.endpoint, served_params=_plain(http.params))
    return record


def _plain(params: DefenseParams) -> dict[str, Any]:
    return {k: v if isinstance(v, int | float) else str(v) for k, v in asdict(params).items()}


def versions() -> dict[str, str]:
    """Versions of the libraries the numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for package in ("torch", "scikit-learn", "onnxruntime", "dynanoise"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out
