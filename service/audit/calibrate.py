"""`dynanoise calibrate`: choose a tenant's privacy setting for one model, from the
adaptive audit's worst case on shadow and reference data only.

1. Reference rows: every row of the model's data set except its members and its test
   split. The search population (complementary pairs, the leave-one-out design) is
   trained on a pool drawn from them; its models' answer tables are fitted on other
   reference rows. The target's members never reach a model, a table or a score.
2. Every setting (`service.audit.tuning`) is attacked on the search population by
   the adaptive attacker at the query budget (and, for settings that keep the clean
   labels, by the label-only boundary attack); its utility is measured on the
   target model itself over its test split (rows it never trained on).
3. The chosen setting: the lowest worst-case AUC within the utility budget.
4. A held-out re-audit: a second population, trained with another seed on a pool
   drawn from reference rows the search did not use (where there are enough), attacks
   the chosen setting and the paper's again with more repeats: the number to report,
   beside the search's (which, as the minimum over many noisy estimates, is optimistic).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..defense import DefenseParams, OutputCalibration
from .attacks.adaptive import QUERY_BUDGETS
from .config import AuditConfig
from .defense_aware import (
    QuerySet,
    Targets,
    adds_noise,
    attack_defense,
    cache_population,
    label_only_floor,
    worst_case,
)
from .defenses import AuditedDefense, defense_for_params
from .evaluation import input_bounds
from .population import Population, population_calibrations, population_pool, train_population
from .rows import rows_of
from .seeds import stable_rng
from .target import AuditTarget, load_target, target_calibration
from .tuning import PAPER, Scored, Setting, UtilityBudget, choose, default_settings, frontier
from .utility import utility_report

UTILITY_DRAWS = 3
"""Noisy settings' utility is the mean over this many draws of the noise."""


@dataclass(frozen=True)
class CalibrateConfig:
    """What `dynanoise calibrate` searches and how hard."""

    model_dir: Path
    budget: UtilityBudget
    query_budget: int = 64
    settings: Sequence[Setting] = field(default_factory=default_settings)
    population: int = 16
    repeats: int = 2
    reaudit_population: int = 16
    reaudit_repeats: int = 3
    n_bootstrap: int = 100
    seed: int = 0
    label_only: bool = True
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        # Leave-one-out leaves a target and its partner out: K/2 - 1 >= 2 shadows a side.
        for name in ("population", "reaudit_population"):
            size = getattr(self, name)
            if size < 6 or size % 2:
                raise ValueError(f"{name} must be an even number of models, at least 6")
        if self.repeats < 1 or self.reaudit_repeats < 1 or self.query_budget < 1:
            raise ValueError("repeats, reaudit_repeats and query_budget must be >= 1")

    @property
    def budgets(self) -> tuple[int, ...]:
        return tuple(n for n in QUERY_BUDGETS if n <= self.query_budget) or (1,)


@dataclass
class SearchPopulation:
    """One population ready to attack: its targets, query copies, tables and floor."""

    population: Population
    targets: Targets
    queries: QuerySet
    calibrations: dict[str, OutputCalibration]
    label_floor: dict[str, dict[str, Any]]

    @property
    def rows(self) -> np.ndarray:
        return self.population.pool_rows


def reference_rows(target: AuditTarget) -> np.ndarray:
    """Rows the search may use: not the target's members, not its test split."""
    split = target.split
    taken = np.concatenate([split.target_members, split.test]).astype(np.int64)
    return np.setdiff1d(np.arange(len(target.dataset), dtype=np.int64), taken)


def prepare_population(
    target: AuditTarget,
    candidates: np.ndarray,
    size: int,
    config: CalibrateConfig,
    *,
    seed: int,
    progress: bool,
) -> SearchPopulation:
    """Train ``size`` models on a pool of 2m rows of ``candidates`` and get it ready."""
    m = len(target.split.target_members)
    pool = population_pool(candidates, m, stable_rng(seed, "calibrate pool"))
    population = train_population(
        target.dataset, pool, size, target.recipe, seed=seed, progress=progress
    )
    held_back = np.concatenate([target.split.target_members, target.split.test]).astype(np.int64)
    calibrations = dict(
        population_calibrations(population, target.dataset, seed=seed, exclude=held_back)
    )
    queries = QuerySet.build(
        population.pool.x,
        population.pool.y,
        max(config.budgets),
        bounds=input_bounds(target.dataset),
        seed=seed,
    )
    cached = cache_population(population, queries)
    targets = Targets(population.in_mask, np.arange(size), models=cached)
    floor = {}
    if config.label_only:
        floor = label_only_floor(
            targets,
            queries,
            seed=seed,
            bounds=input_bounds(target.dataset),
            n_bootstrap=config.n_bootstrap,
        )
    return SearchPopulation(population, targets, queries, calibrations, floor)


def attack_setting(
    setting: Setting,
    search: SearchPopulation,
    config: CalibrateConfig,
    *,
    seed: int,
    repeats: int,
) -> dict[str, Any]:
    """Every adaptive attack on one setting; the worst case within the query budget."""

    def defense_for_repeat(r: int) -> AuditedDefense:
        secret = np.random.default_rng([seed, r, 0xCA11B]).bytes(32)
        return defense_for_params(
            setting.name, setting.params, secret=secret, calibrations=search.calibrations
        )

    attacks = attack_defense(
        defense_for_repeat,
        search.targets,
        search.targets.models,
        search.population.in_mask,
        search.queries,
        seed=seed,
        repeats=repeats,
        budgets=config.budgets,
        n_bootstrap=config.n_bootstrap,
    )
    counted = {n: a for n, a in attacks.items() if a["queries"] <= config.query_budget}
    if not adds_noise(defense_for_repeat(0)):
        # Its answers carry the clean labels: the boundary attack counts whatever its
        # query cost (177 label queries per row, over a budget of 64): conservative.
        counted.update(search.label_floor)
        attacks.update(search.label_floor)
    return {"attacks": attacks, "worst_case": worst_case(counted)}


def target_utility(
    setting: Setting, target: AuditTarget, calibration: OutputCalibration, *, seed: int
) -> dict[str, float]:
    """Utility on the target's test split (mean over draws for noisy settings)."""
    model = target.model
    test = rows_of(target.dataset, target.split.test)
    logits = model.logits(model.validate(test.x))
    defense = defense_for_params(
        setting.name,
        setting.params,
        secret=stable_rng(seed, "utility secret").bytes(32),
        model_id=model.model_id,
        calibrations={model.model_id: calibration},
    )
    draws = UTILITY_DRAWS if adds_noise(defense) else 1
    reports = [
        utility_report(defense(logits, test.x, stable_rng(seed, "utility", str(d))), test.y)
        for d in range(draws)
    ]
    return {key: float(np.mean([r[key] for r in reports])) for key in reports[0]}


def run_calibration(config: CalibrateConfig, *, progress: bool = True) -> dict[str, Any]:
    """The search, the choice and the re-audit, as one JSON-ready record."""
    started = time.monotonic()
    target = load_target(AuditConfig(data_dir=config.data_dir), config.model_dir)
    calibration = target_calibration(target)
    undefended = _undefended_utility(target)
    reference = reference_rows(target)
    tell = _teller(progress)
    tell(f"search population: {config.population} models on reference rows")
    search = prepare_population(
        target, reference, config.population, config, seed=config.seed, progress=progress
    )
    scored: list[Scored] = []
    records: list[dict[str, Any]] = []
    bar = tqdm(config.settings, desc="settings", unit="setting", disable=not progress)
    for setting in bar:
        bar.set_postfix_str(setting.name)
        attacked = attack_setting(setting, search, config, seed=config.seed, repeats=config.repeats)
        utility = target_utility(setting, target, calibration, seed=config.seed)
        violations = tuple(config.budget.violations(utility, undefended))
        scored.append(Scored(setting, attacked["worst_case"], utility, violations))
        records.append(_record(setting, attacked["worst_case"], utility, violations, undefended))
    chosen = choose(scored)
    front = frontier(scored)
    reaudit = _reaudit(target, reference, search, chosen, config, progress)
    return {
        "model_id": target.model.model_id,
        "model_dir": str(config.model_dir),
        "query_budget": config.query_budget,
        "budgets": list(config.budgets),
        "utility_budget": {
            "max_accuracy_drop": config.budget.max_accuracy_drop,
            "max_ece": config.budget.max_ece,
            "max_nll_increase": config.budget.max_nll_increase,
        },
        "undefended": undefended,
        "label_only_floor": _floor_summary(search.label_floor),
        "search": {
            "population": config.population,
            "repeats": config.repeats,
            "pool_rows": len(search.rows),
            "reference_rows": len(reference),
            "member_pairs": int(search.targets.is_member.sum()),
        },
        "settings": records,
        "frontier": [s.setting.name for s in front],
        "chosen": None if chosen is None else _chosen(chosen),
        "reaudit": reaudit,
        "seconds": round(time.monotonic() - started, 1),
    }


def _reaudit(
    target: AuditTarget,
    reference: np.ndarray,
    search: SearchPopulation,
    chosen: Scored | None,
    config: CalibrateConfig,
    progress: bool,
) -> dict[str, Any]:
    """The chosen setting and the paper's on a second population, more repeats."""
    unused = np.setdiff1d(reference, search.rows)
    m = len(target.split.target_members)
    disjoint = len(unused) >= 2 * m
    candidates = unused if disjoint else reference
    _teller(progress)(
        f"re-audit: {config.reaudit_population} new models on "
        f"{'rows the search did not use' if disjoint else 'reference rows (overlapping the search pool)'}"
    )
    seed = config.seed + 1
    fresh = prepare_population(
        target, candidates, config.reaudit_population, config, seed=seed, progress=progress
    )
    settings = [s for s in config.settings if s.name == PAPER]
    if chosen is not None and chosen.setting.name != PAPER:
        settings.append(chosen.setting)
    out: dict[str, Any] = {
        "population": config.reaudit_population,
        "repeats": config.reaudit_repeats,
        "pool_disjoint_from_search": bool(disjoint),
        "label_only_floor": _floor_summary(fresh.label_floor),
        "settings": {},
    }
    for setting in settings:
        attacked = attack_setting(setting, fresh, config, seed=seed, repeats=config.reaudit_repeats)
        out["settings"][setting.name] = attacked["worst_case"]
    return out


def _undefended_utility(target: AuditTarget) -> dict[str, float]:
    model = target.model
    test = rows_of(target.dataset, target.split.test)
    logits = np.asarray(model.logits(model.validate(test.x)), dtype=np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return utility_report(probabilities, test.y)


def _record(
    setting: Setting,
    worst: dict[str, Any],
    utility: dict[str, float],
    violations: Sequence[str],
    undefended: dict[str, float],
) -> dict[str, Any]:
    return {
        "name": setting.name,
        "params": params_record(setting.params),
        "worst_case": worst,
        "utility": utility,
        "accuracy_drop": undefended["accuracy"] - utility["accuracy"],
        "nll_increase": utility["nll"] - undefended["nll"],
        "within_budget": not violations,
        "violations": list(violations),
    }


def _chosen(s: Scored) -> dict[str, Any]:
    return {"name": s.setting.name, "params": params_record(s.setting.params)}


def params_record(params: DefenseParams) -> dict[str, Any]:
    """Tenant parameters as the admin API takes them."""
    return {
        "base_variance": params.base_variance,
        "lambda_scale": params.lambda_scale,
        "temperature": params.temperature,
        "ensemble_size": params.ensemble_size,
        "sensitivity": str(params.sensitivity),
        "noise_mode": str(params.noise_mode),
        "output_mode": str(params.output_mode),
        "confidence_buckets": params.confidence_buckets,
    }


def _floor_summary(floor: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    if not floor:
        return None
    name, attack = next(iter(floor.items()))
    return {
        "attack": name,
        "auc": attack["auc"],
        "auc_ci": attack["auc_ci"],
        "tpr_at_1pct_fpr": attack["tpr_at_1pct_fpr"],
        "tpr_at_1pct_fpr_ci": attack["tpr_at_1pct_fpr_ci"],
    }


def _teller(progress: bool) -> Callable[[str], None]:
    return (lambda text: tqdm.write(text)) if progress else (lambda _: None)
