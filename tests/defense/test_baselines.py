from __future__ import annotations

import numpy as np
import pytest

from service.defense import (
    no_defense,
    static_gaussian,
    temperature_only,
    top1_label_only,
    top_k_rounded,
)

LOGITS = np.random.default_rng(0).normal(scale=4.0, size=(300, 10))


@pytest.mark.parametrize(
    "defense",
    [
        no_defense,
        lambda z: temperature_only(z, 10.0),
        top1_label_only,
        lambda z: top_k_rounded(z, 3, 1),
    ],
)
def test_deterministic_baselines_keep_the_argmax_and_sum_to_one(defense) -> None:  # type: ignore[no-untyped-def]
    out = defense(LOGITS)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(out.argmax(axis=1), LOGITS.argmax(axis=1))


def test_top_k_rounded_keeps_at_most_k_classes() -> None:
    out = top_k_rounded(LOGITS, k=2, decimals=1)
    assert np.all((out > 0).sum(axis=1) <= 2)


def test_static_gaussian_noise_has_fixed_spread() -> None:
    z = np.zeros((20_000, 2))
    out = static_gaussian(z, std=1.0, rng=np.random.default_rng(1))
    # p0 = sigmoid(e0 - e1) with e0 - e1 ~ N(0, 2): its log-odds have variance 2.
    log_odds = np.log(out[:, 0] / out[:, 1])
    assert log_odds.var() == pytest.approx(2.0, rel=0.05)
