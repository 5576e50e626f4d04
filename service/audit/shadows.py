"""The paper protocol's shadow models: trained like the target, on rows the attacker holds.

The paper's few shadows on the shadow-in rows (for the shadow-model attack and the
paper's LiRA). Only clean logits are kept; the paper fits on them undefended. The
defense-aware protocol's models are the leave-one-out population
(`service.audit.population`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from .datasets import Dataset
from .splits import Split
from .training import Recipe, predict_logits, train_with_recipe


def stable_rng(seed: int, *words: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and the given names (not on call order)."""
    return np.random.default_rng([seed, *(zlib.crc32(w.encode()) for w in words)])


@dataclass(frozen=True, eq=False)
class Rows:
    """Inputs and true labels of some rows of the data set, and which rows they are
    (``index``, the data set's row numbers: how the audit keeps fits off evaluation rows)."""

    x: NDArray[Any]
    y: NDArray[np.int64]
    index: NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class ShadowLogits:
    """Clean logits of the paper's shadows: paper_in[j] / paper_out[j] is shadow j
    (trained on ``shadow_in``) on its training rows and on held-out rows; j = 0 also
    serves the shadow-model attack."""

    shadow_in: Rows
    shadow_out: Rows
    paper_in: list[NDArray[np.float32]]
    paper_out: list[NDArray[np.float32]]


def train_shadows(
    dataset: Dataset,
    split: Split,
    recipe: Recipe,
    *,
    seed: int,
    n_paper_shadows: int,
    progress: bool = True,
) -> ShadowLogits:
    """``n_paper_shadows`` models with the target's recipe, each with its own seed, on
    the same shadow-in rows capped at the target's member count (so they overfit
    alike), and as many shadow-out rows (the paper's 50/50 balance)."""
    n_members = len(split.target_members)
    pick = stable_rng(seed, "shadow rows")
    n_side = min(n_members, len(split.shadow_in), len(split.shadow_out))
    shadow_in = np.sort(pick.permutation(split.shadow_in)[:n_side])
    shadow_out = np.sort(pick.permutation(split.shadow_out)[:n_side])
    paper_in, paper_out = [], []
    bar = tqdm(range(n_paper_shadows), desc="paper shadows", unit="model", disable=not progress)
    for j in bar:
        shadow = train_with_recipe(dataset, shadow_in, recipe, seed=seed + 1 + j, progress=False)
        paper_in.append(predict_logits(shadow, dataset.x[shadow_in]))
        paper_out.append(predict_logits(shadow, dataset.x[shadow_out]))
    return ShadowLogits(
        shadow_in=rows_of(dataset, shadow_in),
        shadow_out=rows_of(dataset, shadow_out),
        paper_in=paper_in,
        paper_out=paper_out,
    )


def rows_of(dataset: Dataset, rows: NDArray[np.int64]) -> Rows:
    """Inputs and labels of the given data set rows."""
    index = np.asarray(rows, dtype=np.int64)
    return Rows(np.ascontiguousarray(dataset.x[index]), dataset.y[index], index)
