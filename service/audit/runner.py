"""Run a whole privacy audit: target, shadows, every defense under every protocol.

The target is either trained here (`train_and_export`, the same code as
`dynanoise train`) and queried in process, or a live deployment queried over
HTTP whose model directory (manifest with the split) the auditor holds. Either
way the attacks see only ``Oracle.query`` answers; the shadows are the
attacker's own models, trained with the target's recipe.
"""

from __future__ import annotations

import json
import platform
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..defense import DefenseParams
from ..runtime import OnnxClassifier
from .attacks import PAPER_ATTACK_NAMES
from .datasets import load_dataset
from .defenses import (
    BASELINE,
    DEFENSE_NAMES,
    AuditedDefense,
    build_defenses,
    mean_sensitivity,
    served_defense,
)
from .midput import midput, midput_table
from .oracle import Endpoint, HttpOracle, InProcessOracle, Oracle
from .protocol import PROTOCOLS, AttackResult, EvalSet, defense_aware_protocol, paper_protocol
from .shadows import rows_of, stable_rng, train_shadows
from .splits import Split
from .training import RECIPES, Recipe, train_and_export
from .utility import utility_report

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class AuditConfig:
    """What to audit and how hard. None means: take the data set's training recipe."""

    dataset: str = "digits"
    protocols: tuple[str, ...] = PROTOCOLS
    defenses: tuple[str, ...] = DEFENSE_NAMES
    params: DefenseParams = field(default_factory=DefenseParams)
    seed: int = 0
    n_shadows: int = 16
    n_paper_shadows: int = 3
    n_queries: int = 16
    n_bootstrap: int = 200
    max_members: int | None = None
    epochs: int | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        bad = sorted(set(self.protocols) - set(PROTOCOLS))
        if bad or not self.protocols:
            raise ValueError(
                f"protocols must be among {list(PROTOCOLS)}, got {list(self.protocols)}"
            )
        # Carlini LiRA estimates a variance from each row's in and out shadows: >= 2 each.
        if self.n_shadows < 4 or self.n_paper_shadows < 1 or self.n_queries < 1:
            raise ValueError("need n_shadows >= 4, n_paper_shadows >= 1 and n_queries >= 1")


@dataclass(frozen=True)
class HttpTarget:
    """A live deployment: its URL, a tenant's key, the model and the tenant's parameters
    (known to the attacker by assumption; only the noise key stays secret)."""

    base_url: str
    api_key: str
    model: str
    params: DefenseParams = field(default_factory=DefenseParams)
    endpoint: Endpoint = "v1"
    batch_size: int = 256


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
    """Train (or load) the target and the shadows, then attack every defense.

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
    manifest = json.loads((model_dir / "manifest.json").read_text())
    trained_on = manifest.get("trained_on", {})
    dataset_name = trained_on.get("dataset", config.dataset)
    options = {**trained_on.get("options", {}), **config.dataset_options}
    dataset = load_dataset(dataset_name, data_dir=config.data_dir, **options)
    split = Split.from_manifest(manifest["split"])
    recipe = _recipe(manifest, dataset_name, config.epochs)
    model = OnnxClassifier.load(model_dir)

    eval_rows = np.concatenate([split.eval_members, split.eval_nonmembers])
    eval_set = EvalSet(
        rows_of(dataset, eval_rows),
        np.r_[np.ones(len(split.eval_members), bool), np.zeros(len(split.eval_nonmembers), bool)],
    )
    test = rows_of(dataset, split.test)
    shadows = train_shadows(
        dataset,
        split,
        eval_rows,
        recipe,
        seed=config.seed,
        n_paper_shadows=config.n_paper_shadows,
        n_shadows=config.n_shadows,
        progress=progress,
    )

    # The static Gaussian baseline matches DynaNoise's noise at the mean R on the test set.
    clean_logits = model.logits(model.validate(test.x))
    defenses: list[AuditedDefense] = build_defenses(
        [BASELINE, *config.defenses],
        params=config.params,
        average_sensitivity=mean_sensitivity(clean_logits, config.params),
        secret=stable_rng(config.seed, "server secret").bytes(32),
        model_id=model.model_id,
    )
    if http is not None:
        defenses.append(served_defense(http.params))

    utility: dict[str, dict[str, float]] = {}
    per_defense: dict[str, dict[str, dict[str, AttackResult]]] = {}
    bar = tqdm(defenses, desc="audit", unit="defense", disable=not progress)
    for defense in bar:
        bar.set_postfix_str(defense.name)
        oracle = _oracle(model, defense, http, stable_rng(config.seed, "server", defense.name))
        try:
            target_probs = oracle.query(eval_set.rows.x)
            utility[defense.name] = utility_report(oracle.query(test.x), test.y)
            per_defense[defense.name] = {}
            if "paper" in config.protocols:
                bar.set_postfix_str(f"{defense.name}: paper")
                per_defense[defense.name]["paper"] = paper_protocol(
                    shadows,
                    target_probs,
                    eval_set,
                    seed=config.seed,
                    n_bootstrap=config.n_bootstrap,
                )
            if "defense-aware" in config.protocols:
                per_defense[defense.name]["defense-aware"] = defense_aware_protocol(
                    shadows,
                    defense,
                    oracle.query,
                    target_probs,
                    eval_set,
                    seed=config.seed,
                    n_queries=config.n_queries,
                    n_bootstrap=config.n_bootstrap,
                    progress=_stage_reporter(bar, defense.name),
                )
        finally:
            if isinstance(oracle, HttpOracle):
                oracle.close()

    results = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "config": _config_record(config, recipe),
        "dataset": {
            "name": dataset.name,
            "n_samples": len(dataset),
            "n_classes": dataset.n_classes,
            "description": dataset.description,
            "options": options,
        },
        "split": {
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
                "shadow_train": len(shadows.shadow_in.y),
                "lira_pool": len(shadows.pool.y),
            },
        },
        "target": _target_record(manifest, model.model_id, http),
        "defenses": {
            d.name: {"description": d.description, "parameters": d.parameters()} for d in defenses
        },
        "utility": utility,
        "results": assemble(per_defense, utility),
    }
    rocs = {
        protocol: {
            name: {
                attack: (r.fpr.tolist(), r.tpr.tolist())
                for attack, r in by_protocol[protocol].items()
            }
            for name, by_protocol in per_defense.items()
        }
        for protocol in config.protocols
    }
    return AuditOutcome(results, rocs)


def _stage_reporter(bar: Any, name: str) -> Callable[[str], None]:
    def tell(stage: str) -> None:
        bar.set_postfix_str(f"{name}: {stage}")

    return tell


def assemble(
    per_defense: dict[str, dict[str, dict[str, AttackResult]]],
    utility: dict[str, dict[str, float]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """results[defense][protocol] = {attacks, acc_drop, improvement, put, midput}.

    MIDPUT per spec section 2, against no_defense under the same protocol: PUT for
    every attack, MIDPUT the mean over the paper's six (conf, loss, shadow, lira,
    entropy, mentr).
    """
    base = per_defense[BASELINE]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, by_protocol in per_defense.items():
        out[name] = {}
        for protocol, attacks in by_protocol.items():
            table = midput_table(
                utility[BASELINE]["accuracy"],
                utility[name]["accuracy"],
                {a: r.report["accuracy"] for a, r in base[protocol].items()},
                {a: r.report["accuracy"] for a, r in attacks.items()},
            )
            six = {a: table.puts[a] for a in PAPER_ATTACK_NAMES if a in table.puts}
            out[name][protocol] = {
                "attacks": {a: r.report for a, r in attacks.items()},
                "acc_drop": table.acc_drop,
                "improvement": table.improvements,
                "put": table.puts,
                "midput": midput(six),
            }
    return out


def _oracle(
    model: OnnxClassifier,
    defense: AuditedDefense,
    http: HttpTarget | None,
    rng: np.random.Generator,
) -> Oracle:
    if http is not None and defense.name == "served":
        return HttpOracle(
            http.base_url,
            http.api_key,
            http.model,
            endpoint=http.endpoint,
            batch_size=http.batch_size,
        )
    return InProcessOracle(model, defense, rng)


def _recipe(manifest: dict[str, Any], dataset: str, epochs: int | None) -> Recipe:
    base = RECIPES.get(dataset, Recipe())
    training = manifest.get("training", {})
    known = {k: training[k] for k in asdict(base) if k in training}
    if "hidden" in known:
        known["hidden"] = tuple(known["hidden"])
    recipe = replace(base, **known)
    return replace(recipe, epochs=epochs) if epochs is not None else recipe


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
