"""The defense-aware protocol against an adaptive attacker, scored on many (model, row) pairs.

The attacker knows the defense and its parameters (not the server's key), may ask
up to N = 1, 4, 16, 64 times per row, exactly (``repeat``) or with near-duplicates
(``near_duplicate``: keyed noise hashes the exact bytes), and averages the
recovered logits T log p. Its shadows go through its own copy of the defense, each
shadow with a key of its own, asked the same way. On each averaged view: the
global scorers (confidence, loss, entropy, modified entropy), Carlini LiRA online
and offline, RMIA; from the spread of the answers: the noise-variance attack (a
global score and LiRA on its log); from two answers around a base_variance change:
parameter-change differencing. Label-only attacks (the gap, and the boundary
distance from labels alone) give the floor of any defense that keeps the labels.

Targets are either every model of the leave-one-out population (its other models
are the shadows) or one live deployment (the population is the shadows).
Evaluation rows never reach a fit: shadows are described by the population's own
in-mask, the targets' membership is only read by the scoring at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import logsumexp

from .attacks import entropy, modified_entropy
from .attacks.adaptive import (
    QUERY_BUDGETS,
    answer_spread,
    averaged_logits,
    difference_parameter_change,
    near_duplicates,
)
from .attacks.boundary import LabelOnlyScores, boundary_distance
from .attacks.lira import lira_leave_one_out
from .attacks.rmia import rmia_scores
from .defenses import AuditedDefense, DynaNoiseDefense, LossyDefense
from .oracle import Oracle
from .seeds import stable_rng
from .statistics import repeated_attack_metrics

if TYPE_CHECKING:
    from .population import Population

FloatArray = NDArray[np.float64]
Probabilities = NDArray[np.float32]
AttackKey = tuple[str, str, int]
"""(scorer, query mode, queries per row)."""

MODES = ("repeat", "near_duplicate", "perturbed")
PERTURBATION_SCALE = 0.01
"""The ``perturbed`` mode's noise: N(0, (this x the input range)^2) per feature, clipped
to the range: invisible on images, and enough to move every class's logit by more
than one ulp (so it probes keying on coarse views of the output, not on the bytes)."""
PARAMETER_CHANGE_FACTOR = 2.0
"""The second setting of the differencing attack: base_variance times this."""
LIRA_GLOBAL_VARIANCE_BELOW = 64
"""Carlini et al. fit one shared variance when there are fewer shadows than this."""


@dataclass(frozen=True, eq=False)
class QuerySet:
    """The pool rows and the copies attackers send, (P, n_max, *shape) per mode:
    ``near_duplicates`` (bytes differ, output does not move) and ``perturbed``
    (small random input noise, output moves a little)."""

    x: NDArray[Any]
    y: NDArray[np.int64]
    near_duplicates: NDArray[Any]
    perturbed: NDArray[Any]

    @classmethod
    def build(
        cls,
        x: NDArray[Any],
        y: NDArray[Any],
        n_max: int,
        *,
        bounds: tuple[float, float] | None = None,
        seed: int = 0,
    ) -> QuerySet:
        """Near-duplicates and perturbed copies of float inputs; integer inputs (word
        ids) have no imperceptible change, so their copies are exact repeats."""
        rows = np.asarray(x)
        if rows.dtype.kind != "f":
            copies = np.repeat(rows[:, None], n_max, axis=1)
            return cls(rows, np.asarray(y, np.int64), copies, copies)
        low, high = bounds if bounds is not None else (float(rows.min()), float(rows.max()))
        rng = stable_rng(seed, "perturbed copies")
        noise = rng.standard_normal((rows.shape[0], n_max, *rows.shape[1:]))
        noise[:, 0] = 0.0  # copy 0 is the row itself, as for near-duplicates
        scale = PERTURBATION_SCALE * max(high - low, 1e-12)
        perturbed = np.clip(rows[:, None].astype(np.float64) + scale * noise, low, high)
        return cls(
            rows,
            np.asarray(y, np.int64),
            near_duplicates(rows, n_max),
            perturbed.astype(np.float32),
        )

    def rows(self, mode: str, n: int) -> NDArray[np.float32]:
        """(P * n, *shape): every row n times (``repeat``) or its first n copies."""
        if mode == "repeat":
            stacked = np.repeat(self.x[:, None], n, axis=1)
        elif mode == "near_duplicate":
            stacked = self.near_duplicates[:, :n]
        elif mode == "perturbed":
            stacked = self.perturbed[:, :n]
        else:
            raise ValueError(f"unknown query mode {mode!r}")
        return np.ascontiguousarray(stacked.reshape(-1, *self.x.shape[1:]))


@dataclass(frozen=True, eq=False)
class CachedModel:
    """A model's clean logits on the pool and on its copies, computed once; the
    defense is applied afresh on every ask (so noise and keys vary)."""

    logits: NDArray[np.float32]  # (P, k)
    near_duplicate_logits: NDArray[np.float32]  # (P, n_max, k)
    model_id: str
    forward: Callable[[NDArray[Any]], NDArray[np.float32]] = field(repr=False)
    perturbed_logits: NDArray[np.float32] | None = None  # (P, n_max, k)

    @classmethod
    def of(
        cls, forward: Callable[[NDArray[Any]], Any], queries: QuerySet, model_id: str
    ) -> CachedModel:
        """Run ``forward`` on the pool and every copy of it."""
        n, n_max = queries.near_duplicates.shape[:2]
        return cls(
            np.asarray(forward(queries.x), dtype=np.float32),
            np.asarray(forward(queries.rows("near_duplicate", n_max))).reshape(n, n_max, -1),
            model_id,
            forward,
            np.asarray(forward(queries.rows("perturbed", n_max))).reshape(n, n_max, -1),
        )

    def labels(self, x: NDArray[Any]) -> NDArray[np.int64]:
        """The model's clean top-1 labels on x (the label-only floor's oracle)."""
        return np.asarray(self.forward(x).argmax(axis=1), dtype=np.int64)

    def answers(
        self,
        queries: QuerySet,
        defense: AuditedDefense,
        rng: np.random.Generator,
        mode: str,
        n: int,
    ) -> Probabilities:
        """(P, n, k) defended answers to ``n`` asks per row."""
        if mode == "repeat":
            z = np.repeat(self.logits[:, None], n, axis=1)
        elif mode == "perturbed":
            if self.perturbed_logits is None:
                raise ValueError("this model was cached without perturbed copies")
            z = self.perturbed_logits[:, :n]
        else:
            z = self.near_duplicate_logits[:, :n]
        flat = z.reshape(-1, z.shape[-1])
        probs = defense(flat, queries.rows(mode, n), rng)
        return np.asarray(probs, dtype=np.float32).reshape(z.shape)


@dataclass(frozen=True, eq=False)
class Targets:
    """Who is attacked: in-process ``models`` (each defended by the server's defense
    of the repeat) or one live ``oracle``. ``is_member[t, e]``: ground truth of target
    t on pool row e; ``exclude[t]``: the shadow that is target t itself (-1: none)."""

    is_member: NDArray[np.bool_]
    exclude: NDArray[np.intp]
    models: Sequence[CachedModel] = ()
    oracle: Oracle | None = None

    def answers(
        self,
        defense: AuditedDefense,
        rng: np.random.Generator,
        queries: QuerySet,
        mode: str,
        n: int,
    ) -> Probabilities:
        """(T, P, n, k) answers; a live target answers with its own defense."""
        if self.oracle is not None:
            probs = self.oracle.query(queries.rows(mode, n))
            return np.asarray(probs, dtype=np.float32).reshape(1, len(queries.y), n, -1)
        return np.stack(
            [
                m.answers(queries, with_model_id(defense, m.model_id), rng, mode, n)
                for m in self.models
            ]
        )

    def label_oracles(self) -> list[Callable[[NDArray[Any]], NDArray[np.int64]]]:
        """Label queries to each in-process target: its clean top-1 label."""
        if self.oracle is not None:
            raise ValueError("the label-only floor runs on in-process targets")
        return [m.labels for m in self.models]


def cache_population(population: Population, queries: QuerySet) -> list[CachedModel]:
    """Every population model's logits on the pool and its copies."""
    return [
        CachedModel.of(partial(population.logits_of, j), queries, population.model_ids[j])
        for j in range(population.size)
    ]


def with_model_id(defense: AuditedDefense, model_id: str) -> AuditedDefense:
    """The same defense serving another model (keyed seeds hash the model id; lossy
    answers use that model's tables)."""
    if isinstance(defense, DynaNoiseDefense | LossyDefense):
        return replace(defense, model_id=model_id)
    return defense


def adds_noise(defense: AuditedDefense) -> bool:
    """Whether asking again (exactly or near-duplicated) can give another answer."""
    if isinstance(defense, DynaNoiseDefense):
        return defense.params.adds_noise
    return not defense.repeats_for_identical_input


def attack_defense(
    defense_for_repeat: Callable[[int], AuditedDefense],
    targets: Targets,
    shadows: Sequence[CachedModel],
    shadow_in_mask: NDArray[np.bool_],
    queries: QuerySet,
    *,
    seed: int,
    repeats: int,
    budgets: Sequence[int] = QUERY_BUDGETS,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every adaptive attack on one defense, over ``repeats`` (server noise or key,
    attacker keys and noise); returns metrics by attack name "scorer/mode/N"."""
    tell = progress or (lambda _: None)
    first = defense_for_repeat(0)
    noisy = adds_noise(first)
    plan_budgets = tuple(budgets) if noisy else (1,)
    plan_repeats = repeats if noisy else 1
    collected: dict[AttackKey, list[FloatArray]] = {}
    for r in range(plan_repeats):
        tell(f"{first.name}: repeat {r + 1}/{plan_repeats}")
        server = defense_for_repeat(r)
        scores = _one_repeat(
            server, targets, shadows, shadow_in_mask, queries, plan_budgets, seed=seed, repeat=r
        )
        for key, value in scores.items():
            collected.setdefault(key, []).append(value)
    metrics_rng = stable_rng(seed, "adaptive bootstrap", first.name)
    return {
        attack_name(key): {
            "scorer": key[0],
            "mode": key[1],
            "queries": key[2],
            **repeated_attack_metrics(
                np.stack(values),
                targets.is_member,
                rng=metrics_rng,
                n_bootstrap=n_bootstrap,
                confidence=confidence,
            ),
        }
        for key, values in collected.items()
    }


def attack_name(key: AttackKey) -> str:
    scorer, mode, n = key
    return f"{scorer}/{mode}/{n}"


def attacker_copies(
    server: AuditedDefense, model_ids: Sequence[str], *, seed: int, repeat: int
) -> list[AuditedDefense]:
    """The attacker's copy of ``server`` for each shadow model: same mechanism and
    parameters, and for keyed noise an independent key per shadow (one key shared by
    every shadow would give an example the same noise in all of them, and the
    per-example Gaussians would leave the noise out)."""
    return [
        with_model_id(
            server.for_attacker(stable_rng(seed, "attacker key", server.name, str(repeat), str(j))),
            model_id,
        )
        for j, model_id in enumerate(model_ids)
    ]


def _one_repeat(
    server: AuditedDefense,
    targets: Targets,
    shadows: Sequence[CachedModel],
    shadow_in_mask: NDArray[np.bool_],
    queries: QuerySet,
    budgets: Sequence[int],
    *,
    seed: int,
    repeat: int,
) -> dict[AttackKey, FloatArray]:
    n_max = max(budgets)
    modes = MODES if n_max > 1 else ("repeat",)
    attacker_rng = stable_rng(seed, "attacker noise", server.name, str(repeat))
    server_rng = stable_rng(seed, "server noise", server.name, str(repeat))
    mimics = attacker_copies(server, [s.model_id for s in shadows], seed=seed, repeat=repeat)
    scores: dict[AttackKey, FloatArray] = {}
    temperature = server.temperature
    y = queries.y
    for mode in modes:
        target_answers = targets.answers(server, server_rng, queries, mode, n_max)
        shadow_answers = np.stack(
            [
                s.answers(queries, m, attacker_rng, mode, n_max)
                for s, m in zip(shadows, mimics, strict=True)
            ]
        )
        if mode == "repeat":
            scores.update(_answer_scores(target_answers[:, :, 0], y))
        scores.update(
            _averaged_scores(
                target_answers,
                shadow_answers,
                shadow_in_mask,
                targets.exclude,
                y,
                temperature,
                mode,
                budgets,
            )
        )
    if isinstance(server, DynaNoiseDefense) and server.params.adds_noise:
        scores.update(
            _differencing_scores(
                server, mimics, targets, shadows, shadow_in_mask, queries, server_rng, attacker_rng
            )
        )
    return scores


def _answer_scores(probs: Probabilities, y: NDArray[np.int64]) -> dict[AttackKey, FloatArray]:
    """Single-answer scorers on the probabilities as returned (T, P, k)."""
    p = np.asarray(probs, dtype=np.float64)
    flat = p.reshape(-1, p.shape[-1])
    labels = np.tile(y, p.shape[0])
    shape = p.shape[:2]
    p_true = flat[np.arange(flat.shape[0]), labels]
    return {
        ("conf", "answer", 1): flat.max(axis=1).reshape(shape),
        ("loss", "answer", 1): np.log(np.maximum(p_true, 1e-30)).reshape(shape),
        ("entropy", "answer", 1): -entropy(flat).reshape(shape),
        ("mentr", "answer", 1): -modified_entropy(flat, labels).reshape(shape),
        ("label_gap", "answer", 1): (flat.argmax(axis=1) == labels)
        .astype(np.float64)
        .reshape(shape),
    }


def _averaged_scores(
    target_answers: Probabilities,
    shadow_answers: Probabilities,
    shadow_in_mask: NDArray[np.bool_],
    exclude: NDArray[np.intp],
    y: NDArray[np.int64],
    temperature: float,
    mode: str,
    budgets: Sequence[int],
) -> dict[AttackKey, FloatArray]:
    target_logits = averaged_logits(target_answers, temperature, budgets)
    shadow_logits = averaged_logits(shadow_answers, temperature, budgets)
    scores: dict[AttackKey, FloatArray] = {}
    for n in budgets:
        scores.update(_logit_scores(target_logits[n], y, mode, n))
        scores.update(
            reference_scores(
                target_logits[n], shadow_logits[n], shadow_in_mask, exclude, y, mode, n
            )
        )
        if n >= 4:
            spread_t = answer_spread(target_answers[:, :, :n], temperature)
            spread_s = answer_spread(shadow_answers[:, :, :n], temperature)
            scores[("spread", mode, n)] = spread_t
            online, _ = lira_leave_one_out(
                np.log(spread_t + 1e-12),
                np.log(spread_s + 1e-12),
                shadow_in_mask,
                balanced_exclusions(exclude),
                global_variance=_shadows_per_target(len(shadow_answers), exclude)
                < LIRA_GLOBAL_VARIANCE_BELOW,
            )
            scores[("spread_lira", mode, n)] = online
    return scores


def _logit_scores(
    logits: FloatArray, y: NDArray[np.int64], mode: str, n: int
) -> dict[AttackKey, FloatArray]:
    """The global scorers on softmax of the recovered (averaged) logits."""
    shape = logits.shape[:2]
    flat = logits.reshape(-1, logits.shape[-1])
    probs = np.exp(flat - logsumexp(flat, axis=1, keepdims=True))
    labels = np.tile(y, shape[0])
    return {
        ("conf", mode, n): probs.max(axis=1).reshape(shape),
        ("loss", mode, n): (
            flat[np.arange(flat.shape[0]), labels] - logsumexp(flat, axis=1)
        ).reshape(shape),
        ("entropy", mode, n): -entropy(probs).reshape(shape),
        ("mentr", mode, n): -modified_entropy(probs, labels).reshape(shape),
    }


def _shadows_per_target(n_shadows: int, exclude: NDArray[np.intp]) -> int:
    return n_shadows - 2 * int((exclude >= 0).any())


def logit_margin(logits: FloatArray, y: NDArray[np.int64]) -> FloatArray:
    """phi = z_y - logsumexp_{i != y} z_i (= log p_y - log(1 - p_y) at T = 1), (..., P)."""
    z = np.asarray(logits, dtype=np.float64)
    index = np.broadcast_to(y, z.shape[:-1])[..., None]
    true = np.take_along_axis(z, index, axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, index, -np.inf, axis=-1)
    return np.asarray(true - logsumexp(others, axis=-1), dtype=np.float64)


def reference_scores(
    target_logits: FloatArray,
    shadow_logits: FloatArray,
    shadow_in_mask: NDArray[np.bool_],
    exclude: NDArray[np.intp],
    y: NDArray[np.int64],
    mode: str,
    n: int,
) -> dict[AttackKey, FloatArray]:
    """LiRA online / offline and RMIA, each target against its shadows."""
    phi_t, phi_s = logit_margin(target_logits, y), logit_margin(shadow_logits, y)
    online, offline = lira_leave_one_out(
        phi_t,
        phi_s,
        shadow_in_mask,
        balanced_exclusions(exclude),
        global_variance=_shadows_per_target(len(shadow_logits), exclude)
        < LIRA_GLOBAL_VARIANCE_BELOW,
    )
    p_t = _true_probability(target_logits, y)
    p_s = _true_probability(shadow_logits, y)
    rmia = np.empty_like(p_t)
    for t, left_out in enumerate(balanced_exclusions(exclude)):
        keep = np.ones(len(p_s), dtype=bool)
        keep[left_out[left_out >= 0]] = False
        rmia[t] = rmia_scores(
            p_t[t], p_s[keep], shadow_in_mask[keep], p_t[t], p_s[keep], shadow_in_mask[keep]
        )
    return {
        ("lira_online", mode, n): online,
        ("lira_offline", mode, n): offline,
        ("rmia", mode, n): rmia,
    }


def balanced_exclusions(exclude: NDArray[np.intp]) -> NDArray[np.intp]:
    """(T, 2): the shadows each target's attacks leave out: the target itself and its
    complementary partner (population models come in pairs 2i, 2i + 1); -1 for an
    outside target. Leaving out the target alone would leave its members one IN
    shadow short and its non-members one OUT shadow short: a difference the attacks
    could read (RMIA's mean over references, LiRA's variance estimates) without
    looking at the target at all. Without it every row has K/2 - 1 of each."""
    own = np.asarray(exclude, dtype=np.intp)
    return np.stack([own, np.where(own >= 0, own ^ 1, -1)], axis=1)


def _true_probability(logits: FloatArray, y: NDArray[np.int64]) -> FloatArray:
    index = np.broadcast_to(y, logits.shape[:-1])[..., None]
    log_p = np.take_along_axis(logits, index, axis=-1)[..., 0] - logsumexp(logits, axis=-1)
    return np.asarray(np.exp(log_p), dtype=np.float64)


def _differencing_scores(
    server: DynaNoiseDefense,
    mimics: Sequence[AuditedDefense],
    targets: Targets,
    shadows: Sequence[CachedModel],
    shadow_in_mask: NDArray[np.bool_],
    queries: QuerySet,
    server_rng: np.random.Generator,
    attacker_rng: np.random.Generator,
) -> dict[AttackKey, FloatArray]:
    """One answer per row before and one after base_variance * 2 on the same tenant
    (in process only: changing a live tenant's parameters needs its operator)."""
    if targets.oracle is not None:
        return {}
    v1 = server.params.base_variance
    v2 = v1 * PARAMETER_CHANGE_FACTOR

    def changed(defense: AuditedDefense) -> AuditedDefense:
        assert isinstance(defense, DynaNoiseDefense)
        return replace(defense, params=replace(defense.params, base_variance=v2))

    def solved(before: Probabilities, after: Probabilities) -> FloatArray:
        return difference_parameter_change(before, after, server.temperature, v1, v2)

    target = solved(
        targets.answers(server, server_rng, queries, "repeat", 1)[:, :, 0],
        targets.answers(changed(server), server_rng, queries, "repeat", 1)[:, :, 0],
    )
    shadow = np.stack(
        [
            solved(
                s.answers(queries, m, attacker_rng, "repeat", 1)[:, 0],
                s.answers(queries, changed(m), attacker_rng, "repeat", 1)[:, 0],
            )
            for s, m in zip(shadows, mimics, strict=True)
        ]
    )
    return reference_scores(
        target, shadow, shadow_in_mask, targets.exclude, queries.y, "parameter_change", 2
    )


def label_only_floor(
    targets: Targets,
    queries: QuerySet,
    *,
    seed: int,
    bounds: tuple[float, float] | None,
    n_bootstrap: int,
) -> dict[str, dict[str, Any]]:
    """The boundary-distance attack on clean labels: the floor of label-keeping defenses."""
    rng = stable_rng(seed, "label-only boundary")
    results: list[LabelOnlyScores] = [
        boundary_distance(oracle, queries.x, queries.y, rng=rng, bounds=bounds)
        for oracle in targets.label_oracles()
    ]
    scores = np.stack([r.scores for r in results])[None]
    metrics = repeated_attack_metrics(
        scores, targets.is_member, rng=stable_rng(seed, "label bootstrap"), n_bootstrap=n_bootstrap
    )
    cost = results[0].queries_per_row
    return {
        f"label_boundary/labels/{cost}": {
            "scorer": "label_boundary",
            "mode": "labels",
            "queries": cost,
            **metrics,
        }
    }


def worst_case(
    attacks: dict[str, dict[str, Any]], max_queries: int | None = None
) -> dict[str, Any]:
    """Highest AUC and highest TPR at 1 % FPR over the attacks (within a query budget)."""
    pool = {
        name: a for name, a in attacks.items() if max_queries is None or a["queries"] <= max_queries
    }
    if not pool:
        raise ValueError("no attack within the query budget")
    by_auc = max(pool, key=lambda name: pool[name]["auc"])
    with_tpr = {name: a for name, a in pool.items() if a["tpr_at_1pct_fpr"] is not None}
    by_tpr = max(with_tpr, key=lambda name: with_tpr[name]["tpr_at_1pct_fpr"]) if with_tpr else None
    return {
        "auc": pool[by_auc]["auc"],
        "auc_ci": pool[by_auc]["auc_ci"],
        "attack": by_auc,
        "tpr_at_1pct_fpr": with_tpr[by_tpr]["tpr_at_1pct_fpr"] if by_tpr else None,
        "tpr_at_1pct_fpr_ci": with_tpr[by_tpr]["tpr_at_1pct_fpr_ci"] if by_tpr else None,
        "tpr_attack": by_tpr,
    }


def query_budget_rows(
    defense: str, attacks: dict[str, dict[str, Any]], budgets: Iterable[int] = QUERY_BUDGETS
) -> list[dict[str, Any]]:
    """The worst case at each budget N (attacks asking at most N times per row)."""
    rows = []
    for n in budgets:
        worst = worst_case(attacks, n)
        rows.append(
            {
                "defense": defense,
                "attack": worst["attack"],
                "queries": n,
                "auc": worst["auc"],
                "auc_ci": worst["auc_ci"],
                "tpr_at_1pct_fpr": worst["tpr_at_1pct_fpr"],
            }
        )
    return rows
