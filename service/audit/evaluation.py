"""The two protocols run over their repeats, for every defense of an audit.

- paper: the paper's split and attacks (`service.audit.protocol`), once per repeat
  (server noise, keyed secret, bootstrap seed); MIDPUT with a t interval.
- defense-aware: the adaptive attacker (`service.audit.defense_aware`) on the
  leave-one-out population in process, or on a live deployment with the
  population as its shadows; worst case and query-budget curves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .attacks import PAPER_ATTACK_NAMES
from .config import AuditConfig, HttpTarget
from .defense_aware import (
    CachedModel,
    QuerySet,
    Targets,
    adds_noise,
    attack_defense,
    cache_population,
    label_only_floor,
    query_budget_rows,
    worst_case,
)
from .defenses import BASELINE, SERVED, DefenseFactory, needs_calibration
from .midput import midput, midput_table
from .oracle import HttpOracle, InProcessOracle, Oracle
from .population import (
    default_population_size,
    endpoint_pool,
    population_calibrations,
    population_pool,
    train_population,
)
from .protocol import PAPER_ATTACKS, AttackResult, EvalSet, paper_protocol
from .rows import rows_of
from .seeds import stable_rng
from .shadows import train_shadows
from .statistics import mean_interval, repeated_attack_metrics
from .target import AuditTarget
from .utility import utility_report

ENDPOINT_POPULATION = 64
"""Shadows trained against a live deployment when the audit does not say."""
PAPER_BOOTSTRAP = 50
"""Per-repeat resamples for the paper tables' accuracy intervals."""


def audit_oracle(
    factory: DefenseFactory,
    name: str,
    repeat: int,
    target: AuditTarget,
    http: HttpTarget | None,
    seed: int,
) -> Oracle:
    """What answers for defense ``name`` in ``repeat``: the live deployment for the
    served defense, else the exported model behind that defense, in process."""
    if name == SERVED:
        assert http is not None
        return http_oracle(http)
    defense = factory.get(name, repeat)
    return InProcessOracle(target.model, defense, stable_rng(seed, "server", name, str(repeat)))


def http_oracle(http: HttpTarget) -> HttpOracle:
    return HttpOracle(
        http.base_url,
        http.api_key,
        http.model,
        endpoint=http.endpoint,
        batch_size=http.batch_size,
    )


@dataclass
class PaperOutcome:
    blocks: dict[str, dict[str, Any]]
    worst_case: dict[str, dict[str, Any]]
    utility: dict[str, dict[str, float]]
    rocs: dict[str, dict[str, tuple[list[float], list[float]]]]
    shadow_rows: int


def run_paper_protocol(
    config: AuditConfig,
    target: AuditTarget,
    factory: DefenseFactory,
    http: HttpTarget | None,
    progress: bool,
) -> PaperOutcome:
    """The paper's protocol for every defense, ``config.repeats`` times."""
    dataset, split = target.dataset, target.split
    eval_rows = np.concatenate([split.eval_members, split.eval_nonmembers])
    eval_set = EvalSet(
        rows_of(dataset, eval_rows),
        np.r_[np.ones(len(split.eval_members), bool), np.zeros(len(split.eval_nonmembers), bool)],
    )
    test = rows_of(dataset, split.test)
    shadows = train_shadows(
        dataset,
        split,
        target.recipe,
        seed=config.seed,
        n_paper_shadows=config.n_paper_shadows,
        progress=progress,
    )
    runs: dict[str, list[dict[str, AttackResult]]] = {name: [] for name in factory.names}
    utilities: dict[str, list[dict[str, float]]] = {name: [] for name in factory.names}
    steps = [(r, name) for r in range(config.repeats) for name in factory.names]
    for r, name in tqdm(steps, desc="paper protocol", unit="run", disable=not progress):
        oracle = audit_oracle(factory, name, r, target, http, config.seed)
        try:
            probs = oracle.query(eval_set.rows.x)
            utilities[name].append(utility_report(oracle.query(test.x), test.y))
        finally:
            if isinstance(oracle, HttpOracle):
                oracle.close()
        runs[name].append(
            paper_protocol(
                shadows, probs, eval_set, seed=config.seed + r, n_bootstrap=PAPER_BOOTSTRAP
            )
        )
    blocks, worst = {}, {}
    for name in factory.names:
        blocks[name] = _paper_block(
            runs[name], runs[BASELINE], utilities[name], utilities[BASELINE], eval_set, config
        )
        worst[name] = worst_case(blocks[name]["attacks"])
    rocs = {
        name: {
            attack: (result.fpr.tolist(), result.tpr.tolist())
            for attack, result in runs[name][0].items()
        }
        for name in factory.names
    }
    utility = {
        name: {key: float(np.mean([u[key] for u in utilities[name]])) for key in utilities[name][0]}
        for name in factory.names
    }
    return PaperOutcome(blocks, worst, utility, rocs, len(shadows.shadow_in.y))


def _paper_block(
    runs: list[dict[str, AttackResult]],
    baseline: list[dict[str, AttackResult]],
    utility: list[dict[str, float]],
    base_utility: list[dict[str, float]],
    eval_set: EvalSet,
    config: AuditConfig,
) -> dict[str, Any]:
    """Per attack: the first repeat's report (accuracy and its intervals) with the AUC
    and TPR over all repeats; MIDPUT per repeat, then its mean and t interval."""
    attacks: dict[str, dict[str, Any]] = {}
    for attack in PAPER_ATTACKS:
        scores = np.stack([run[attack].scores for run in runs])[:, None, :]
        over_repeats = repeated_attack_metrics(
            scores,
            eval_set.is_member[None, :],
            rng=stable_rng(config.seed, "paper repeats", attack),
            n_bootstrap=config.n_bootstrap,
        )
        accuracy = [run[attack].report["accuracy"] for run in runs]
        attacks[attack] = {
            **over_repeats,
            "scorer": attack,
            "mode": "answer",
            "queries": 1,
            "accuracy": float(np.mean(accuracy)),
            "accuracy_ci": list(mean_interval(accuracy)[1:]),
            "one_class": any(run[attack].report["one_class"] for run in runs),
        }
    midputs, drops = [], []
    for run, base, mine, theirs in zip(runs, baseline, utility, base_utility, strict=True):
        table = midput_table(
            theirs["accuracy"],
            mine["accuracy"],
            {a: base[a].report["accuracy"] for a in PAPER_ATTACKS},
            {a: run[a].report["accuracy"] for a in PAPER_ATTACKS},
        )
        six = {a: table.puts[a] for a in PAPER_ATTACK_NAMES}
        midputs.append(midput(six))
        drops.append(table.acc_drop)
    value, low, high = mean_interval(midputs)
    return {
        "attacks": attacks,
        "acc_drop": float(np.mean(drops)),
        "midput": value,
        "midput_ci": [low, high],
        "midput_by_repeat": midputs,
    }


@dataclass
class AdaptiveOutcome:
    blocks: dict[str, dict[str, Any]]
    query_budget: list[dict[str, Any]]
    evaluation: dict[str, Any]
    label_only: dict[str, Any] = field(default_factory=dict)


def run_adaptive_protocol(
    config: AuditConfig,
    target: AuditTarget,
    factory: DefenseFactory,
    http: HttpTarget | None,
    progress: bool,
) -> AdaptiveOutcome:
    """Every defense against the adaptive attacker, ``config.repeats`` times each."""
    dataset, split = target.dataset, target.split
    m = len(split.target_members)
    if http is None:
        # The population is separate from the paper's target: any row of the data set may
        # be in its pool (the paper's test set included).
        every_row = np.arange(len(dataset), dtype=np.int64)
        pool_rows = population_pool(every_row, m, stable_rng(config.seed, "population pool"))
        size = config.population or default_population_size(m)
    else:
        pool_rows = endpoint_pool(
            split.target_members,
            split.target_nonmembers,
            config.seed,
            others=np.arange(len(dataset), dtype=np.int64),
        )
        size = config.population or ENDPOINT_POPULATION
    population = train_population(
        dataset, pool_rows, size, target.recipe, seed=config.seed, progress=progress
    )
    if needs_calibration(factory):
        factory = replace(
            factory,
            calibrations={
                **factory.calibrations,
                **population_calibrations(population, dataset, seed=config.seed),
            },
        )
    queries = QuerySet.build(
        population.pool.x,
        population.pool.y,
        max(config.budgets),
        bounds=input_bounds(dataset),
        seed=config.seed,
    )
    cached = cache_population(population, queries)
    if http is None:
        local = Targets(population.in_mask, np.arange(size), models=cached)
    else:
        is_member = np.r_[np.ones(m, bool), np.zeros(m, bool)][None, :]
        served_model = _cached_target(target, queries)
        local = Targets(is_member, np.array([-1]), models=[served_model])
    bar = tqdm(factory.names, desc="adaptive attacks", unit="defense", disable=not progress)
    label_only: dict[str, Any] = {}
    if config.label_only:
        bar.set_postfix_str("label-only boundary attack")
        label_only = label_only_floor(
            local,
            queries,
            seed=config.seed,
            bounds=input_bounds(dataset),
            n_bootstrap=config.n_bootstrap,
        )
    blocks: dict[str, dict[str, Any]] = {}
    budget_rows: list[dict[str, Any]] = []
    for name in bar:
        targets = local
        oracle: HttpOracle | None = None
        if name == SERVED:
            assert http is not None
            oracle = http_oracle(http)
            targets = Targets(local.is_member, local.exclude, oracle=oracle)
        try:
            attacks = attack_defense(
                partial(factory.get, name),
                targets,
                cached,
                population.in_mask,
                queries,
                seed=config.seed,
                repeats=config.repeats,
                budgets=config.budgets,
                n_bootstrap=config.n_bootstrap,
                progress=bar.set_postfix_str,
            )
        finally:
            if oracle is not None:
                oracle.close()
        noisy = adds_noise(factory.get(name, 0))
        if not noisy:
            # Its answers carry the clean labels: the label-only floor applies as measured.
            attacks.update(label_only)
        blocks[name] = {"attacks": attacks, "worst_case": worst_case(attacks)}
        if noisy:
            budget_rows += query_budget_rows(name, attacks, config.budgets)
    n_in = int(local.is_member.sum())
    evaluation = {
        "member_pairs": n_in,
        "non_member_pairs": int(local.is_member.size - n_in),
        "targets": int(local.is_member.shape[0]),
        "population": size,
        "pool_rows": len(pool_rows),
        "members_per_model": m,
        "design": "leave-one-out" if http is None else "live target, population as shadows",
    }
    return AdaptiveOutcome(blocks, budget_rows, evaluation, label_only)


def _cached_target(target: AuditTarget, queries: QuerySet) -> CachedModel:
    """The exported target model, run locally on the pool and its copies."""
    model = target.model

    def forward(x: Any) -> Any:
        return model.logits(model.validate(np.asarray(x)))

    return CachedModel.of(forward, queries, model.model_id)


def input_bounds(dataset: Any) -> tuple[float, float] | None:
    """The input range label queries are clipped to: [0, 1] for images scaled so."""
    x = dataset.x
    if x.dtype.kind != "f":
        return None
    low, high = float(x.min()), float(x.max())
    return (low, high)
