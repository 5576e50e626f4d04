"""The attacker's shadow models: trained like the target, on rows the attacker holds.

Two sets (spec sections 3 and 5): the paper's few shadows on the shadow-in rows
(for the shadow-model attack and the paper's LiRA), and Carlini et al.'s many
shadows, each trained on a random half of a pool that includes the evaluation
rows, for LiRA online and offline. Only clean logits are kept here; defenses
are applied to them later, per defense.
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
    """Inputs and true labels of some rows of the data set."""

    x: NDArray[Any]
    y: NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class ShadowLogits:
    """Clean logits of the attacker's shadow models; defenses are applied later.

    paper_in[j] / paper_out[j]: shadow j (trained on ``shadow_in``) on its training
    rows and on held-out rows; j = 0 also serves the shadow-model attack.
    pool[j]: Carlini shadow j on every pool row, ``pool_in_mask[j]`` where it trained
    on that row; ``eval_in_pool`` gives the evaluation rows' positions in the pool.
    """

    shadow_in: Rows
    shadow_out: Rows
    paper_in: list[NDArray[np.float32]]
    paper_out: list[NDArray[np.float32]]
    pool: Rows
    pool_logits: NDArray[np.float32]  # (n_shadows, n_pool, k)
    pool_in_mask: NDArray[np.bool_]  # (n_shadows, n_pool)
    eval_in_pool: NDArray[np.int64]


def balanced_pool_mask(n_shadows: int, n_rows: int, rng: np.random.Generator) -> NDArray[np.bool_]:
    """Carlini et al.'s design: every row is in the training set of exactly half the
    shadows (rounded down), chosen at random per row."""
    if n_shadows < 2:
        raise ValueError("Carlini LiRA needs at least 2 shadows")
    order = rng.random((n_shadows, n_rows)).argsort(axis=0)
    return np.asarray(order < n_shadows // 2)


def train_shadows(
    dataset: Dataset,
    split: Split,
    eval_rows: NDArray[np.int64],
    recipe: Recipe,
    *,
    seed: int,
    n_paper_shadows: int,
    n_shadows: int,
    progress: bool = True,
) -> ShadowLogits:
    """The attacker's models, trained like the target (same recipe, no more rows).

    Paper shadows: ``n_paper_shadows`` seeds on the same shadow-in rows, capped at the
    target's member count (so they overfit alike), and as many shadow-out rows (the
    paper's 50/50 balance, which the shadow-model attack's classifier needs). Carlini shadows: ``n_shadows``
    models, each on a random half of a pool made of the evaluation rows plus shadow
    rows, up to twice the member count (each row in exactly half the shadows).
    """
    n_members = len(split.target_members)
    pick = stable_rng(seed, "shadow rows")
    n_side = min(n_members, len(split.shadow_in), len(split.shadow_out))
    shadow_in = np.sort(pick.permutation(split.shadow_in)[:n_side])
    shadow_out = np.sort(pick.permutation(split.shadow_out)[:n_side])
    extra = pick.permutation(np.concatenate([split.shadow_in, split.shadow_out]))
    pool_rows = np.concatenate([eval_rows, extra[: max(0, 2 * n_members - len(eval_rows))]])
    mask = balanced_pool_mask(n_shadows, len(pool_rows), stable_rng(seed, "pool"))

    total = n_paper_shadows + n_shadows
    bar = tqdm(total=total, desc="shadows", unit="model", disable=not progress)

    def fit(rows: NDArray[np.int64], model_seed: int) -> Any:
        model = train_with_recipe(dataset, rows, recipe, seed=model_seed, progress=False)
        bar.update()
        return model

    paper_in, paper_out = [], []
    for j in range(n_paper_shadows):
        shadow = fit(shadow_in, seed + 1 + j)
        paper_in.append(predict_logits(shadow, dataset.x[shadow_in]))
        paper_out.append(predict_logits(shadow, dataset.x[shadow_out]))
    pool_x = dataset.x[pool_rows]
    pool_logits = np.stack(
        [predict_logits(fit(pool_rows[mask[j]], seed + 101 + j), pool_x) for j in range(n_shadows)]
    )
    bar.close()
    return ShadowLogits(
        shadow_in=rows_of(dataset, shadow_in),
        shadow_out=rows_of(dataset, shadow_out),
        paper_in=paper_in,
        paper_out=paper_out,
        pool=rows_of(dataset, pool_rows),
        pool_logits=pool_logits,
        pool_in_mask=mask,
        eval_in_pool=np.arange(len(eval_rows), dtype=np.int64),
    )


def rows_of(dataset: Dataset, rows: NDArray[np.int64]) -> Rows:
    """Inputs and labels of the given data set rows."""
    return Rows(np.ascontiguousarray(dataset.x[rows]), dataset.y[rows])
