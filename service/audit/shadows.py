"""The paper protocol's shadow models: trained like the target, on rows the attacker holds.

The paper's few shadows on the shadow-in rows (for the shadow-model attack and the
paper's LiRA). Only clean logits are kept; the paper fits on them undefended. The
defense-aware protocol's models are the leave-one-out population
(`service.audit.population`). What the protocol fits on, `ShadowLogits`, is the
protocol's own type (`service.audit.protocol`), so that it imports without torch.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from .datasets import Dataset
from .protocol import ShadowLogits
from .rows import rows_of
from .seeds import stable_rng
from .splits import Split
from .training import Recipe, predict_logits, train_with_recipe


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
