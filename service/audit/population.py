"""The model population of the leave-one-out design (Carlini et al. 2022, section VI).

K models, each trained with the target's recipe on exactly m rows of a pool of 2m
rows: models come in complementary pairs (one trains on a random half, the other
on the rest), so every model trains on as many rows as the target and every pool
row is in exactly half of the models. In process, each model in turn is the
target and the others are its shadows: K * m member and K * m non-member
(model, row) pairs. Against a live deployment the population is the attacker's
shadows, on a pool of the target's m members and m rows it never trained on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from ..defense import OutputCalibration
from .datasets import Dataset
from .rows import Rows, rows_of
from .seeds import stable_rng
from .training import Recipe, predict_logits, train_with_recipe

MIN_PAIRS = 10_000
"""Member (and non-member) pairs the default population size aims for."""


@dataclass(frozen=True, eq=False)
class Population:
    """K models on halves of ``pool``; ``in_mask[j, e]`` where model j trained on row e.

    ``logits[j]`` are model j's clean logits on every pool row; ``models`` are kept
    so that near-duplicates and label queries can be answered by the same models.
    """

    pool: Rows
    pool_rows: NDArray[np.int64]
    in_mask: NDArray[np.bool_]  # (K, P)
    logits: NDArray[np.float32]  # (K, P, k)
    models: tuple[Any, ...]
    model_ids: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.models)

    def logits_of(self, index: int, x: NDArray[Any]) -> NDArray[np.float32]:
        """Clean logits of model ``index`` on inputs x (n, *sample_shape)."""
        return predict_logits(self.models[index], x)


def default_population_size(members_per_model: int, min_pairs: int = MIN_PAIRS) -> int:
    """The smallest even K with K * m >= ``min_pairs`` (and at least 16 models)."""
    k = max(16, math.ceil(min_pairs / max(members_per_model, 1)))
    return k + (k % 2)


def complementary_halves(n_models: int, n_rows: int, rng: np.random.Generator) -> NDArray[np.bool_]:
    """(n_models, n_rows) mask: model 2i trains on a random half, model 2i + 1 on the rest.

    Every model has exactly n_rows / 2 rows and every row is in n_models / 2 models.
    """
    if n_models < 2 or n_models % 2 or n_rows < 2 or n_rows % 2:
        raise ValueError("need an even number of models (>= 2) and of pool rows")
    mask = np.zeros((n_models, n_rows), dtype=bool)
    for i in range(0, n_models, 2):
        half = rng.permutation(n_rows)[: n_rows // 2]
        mask[i, half] = True
        mask[i + 1] = ~mask[i]
    return mask


def train_population(
    dataset: Dataset,
    pool_rows: NDArray[np.int64],
    n_models: int,
    recipe: Recipe,
    *,
    seed: int,
    progress: bool = True,
) -> Population:
    """Train ``n_models`` models with ``recipe``, each on one half of ``pool_rows``."""
    pool_rows = np.asarray(pool_rows, dtype=np.int64)
    if len(np.unique(pool_rows)) != len(pool_rows):
        raise ValueError("pool rows must be distinct")
    mask = complementary_halves(n_models, len(pool_rows), stable_rng(seed, "population halves"))
    pool = rows_of(dataset, pool_rows)
    models, logits = [], []
    bar = tqdm(range(n_models), desc="population", unit="model", disable=not progress)
    for j in bar:
        model = train_with_recipe(
            dataset, pool_rows[mask[j]], recipe, seed=seed + 1000 + j, progress=False
        )
        models.append(model)
        logits.append(predict_logits(model, pool.x))
    return Population(
        pool=pool,
        pool_rows=pool_rows,
        in_mask=mask,
        logits=np.stack(logits),
        models=tuple(models),
        model_ids=tuple(f"population-{seed}-{j}" for j in range(n_models)),
    )


def population_pool(
    candidates: NDArray[np.int64], members_per_model: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """2m distinct rows drawn from ``candidates`` (the in-process design's pool)."""
    if len(candidates) < 2 * members_per_model:
        raise ValueError(
            f"a pool of 2 x {members_per_model} rows needs that many candidates, "
            f"have {len(candidates)}"
        )
    return np.sort(rng.choice(candidates, size=2 * members_per_model, replace=False))


def endpoint_pool(
    members: NDArray[np.int64],
    non_members: NDArray[np.int64],
    seed: int,
    others: NDArray[np.int64] | None = None,
) -> NDArray[np.int64]:
    """A live target's m members and m rows it never trained on, in that order.

    The rows are ``permutation(sorted non_members)[:m]`` of a generator seeded with
    ``seed`` (an independent attack can pick the same rows); when the target has fewer
    than m non-members, rows of ``others`` (any other rows it never trained on, in a
    permutation of the same generator) make up the rest.
    """
    m = len(members)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(np.sort(non_members))[:m]
    if len(chosen) < m and others is not None:
        extra = rng.permutation(np.setdiff1d(others, np.r_[members, non_members]))
        chosen = np.r_[chosen, extra[: m - len(chosen)]]
    if len(chosen) < m:
        raise ValueError(f"need {m} rows the target never trained on, have {len(chosen)}")
    return np.concatenate([np.sort(members), chosen]).astype(np.int64)


MAX_CALIBRATION_ROWS = 1_000
"""Held-out rows a population model's answer table is fitted on (at most)."""


def population_calibrations(
    population: Population,
    dataset: Dataset,
    *,
    seed: int,
    exclude: NDArray[np.int64] | None = None,
) -> Mapping[str, OutputCalibration]:
    """A table per population model, from up to MAX_CALIBRATION_ROWS rows outside its
    pool and outside ``exclude`` (calibrate: the target's members and test rows)."""
    taken = population.pool_rows if exclude is None else np.r_[population.pool_rows, exclude]
    outside = np.setdiff1d(np.arange(len(dataset), dtype=np.int64), taken)
    rng = stable_rng(seed, "population calibration rows")
    rows = np.sort(rng.permutation(outside)[:MAX_CALIBRATION_ROWS])
    held_out = rows_of(dataset, rows)
    return {
        model_id: OutputCalibration.fit(population.logits_of(j, held_out.x), held_out.y)
        for j, model_id in enumerate(population.model_ids)
    }
