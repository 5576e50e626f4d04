"""The adaptive attacker's tools: near-duplicates, logit-space averaging, the answer
spread, parameter-change differencing, per-shadow keys and leave-one-out LiRA."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.audit.attacks import lira_offline, lira_online
from service.audit.attacks.adaptive import (
    answer_spread,
    averaged_logits,
    difference_parameter_change,
    near_duplicates,
)
from service.audit.attacks.lira import lira_leave_one_out
from service.audit.attacks.queries import recover_logits
from service.audit.defense_aware import (
    attacker_copies,
    balanced_exclusions,
    logit_margin,
    reference_scores,
)
from service.audit.defenses import DynaNoiseDefense, build_defenses
from service.defense import DefenseParams, NoiseMode, apply_dynanoise, keyed_seeds

K = 10


def _inputs(n: int = 20, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).random((n, d)).astype(np.float32)
    x[::2, :5] = 0.0  # rows with zero features, as in images
    x[1::4] *= -1.0
    return x


@pytest.mark.parametrize("n_copies", [1, 4, 64, 100])
def test_near_duplicates_are_distinct_bytes_and_imperceptible(n_copies: int) -> None:
    x = _inputs()
    copies = near_duplicates(x, n_copies)
    assert copies.shape == (len(x), n_copies, x.shape[1]) and copies.dtype == np.float32
    np.testing.assert_array_equal(copies[:, 0], x)
    for row, originals in zip(copies, x, strict=True):
        assert len({c.tobytes() for c in row}) == n_copies
        assert np.abs(row - originals).max() <= 8 * np.spacing(np.abs(originals).max())
    assert np.isfinite(copies).all()


def test_near_duplicates_get_independent_keyed_seeds_and_repeats_do_not() -> None:
    x = _inputs(n=5)
    copies = near_duplicates(x, 64).reshape(-1, x.shape[1])
    seeds = keyed_seeds(b"k" * 32, "m@1", copies)
    assert len(np.unique(seeds)) == len(copies)
    repeated = np.repeat(x, 4, axis=0)
    assert len(np.unique(keyed_seeds(b"k" * 32, "m@1", repeated))) == len(x)


def test_logit_averaging_cuts_the_noise_variance_n_fold() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, size=(400, K))
    params = DefenseParams(base_variance=1.0, lambda_scale=0.0, temperature=10.0)
    (fresh,) = build_defenses(["dynanoise_fresh"], params=params)
    answers = np.stack(
        [fresh(z, np.zeros((400, 1), np.float32), rng) for _ in range(16)], axis=1
    ).astype(np.float32)
    centred = z - z.mean(axis=1, keepdims=True)
    by_budget = averaged_logits(answers, params.temperature, (1, 4, 16))
    # centred noise has variance sigma^2 (1 - 1/k) per entry; averaging N divides it by N
    expected = 1.0 - 1.0 / K
    for n, mean in by_budget.items():
        variance = float(((mean - centred) ** 2).mean())
        assert variance == pytest.approx(expected / n, rel=0.1), n


def test_averaged_logits_rejects_a_budget_beyond_the_answers() -> None:
    with pytest.raises(ValueError, match="budgets"):
        averaged_logits(np.full((3, 4, K), 0.1), 10.0, (1, 8))


def test_the_answer_spread_grows_with_the_clean_confidence() -> None:
    """DynaNoise's variance sigma0^2 (1 + lambda R): confident rows spread more."""
    rng = np.random.default_rng(1)
    confident = np.zeros((300, K))
    confident[:, 0] = 12.0
    unsure = np.zeros((300, K))
    (fresh,) = build_defenses(["dynanoise_fresh"])
    x = np.zeros((300, 1), np.float32)

    def spread(z: np.ndarray) -> np.ndarray:
        answers = np.stack([fresh(z, x, rng) for _ in range(8)], axis=1)
        return answer_spread(answers, fresh.temperature)

    high, low = spread(confident), spread(unsure)
    # sigma^2 (1 - 1/k) with R ~ 1 and R = 0: 0.3 * 3 * 0.9 vs 0.3 * 0.9
    assert high.mean() == pytest.approx(0.81, rel=0.1)
    assert low.mean() == pytest.approx(0.27, rel=0.1)


def test_two_answers_with_the_same_draws_around_a_variance_change_give_the_exact_logits() -> None:
    """The differencing attack's algebra, on a server whose draws ignore the parameters
    (as keyed noise did before its seeds were bound to them): same unit draws u."""
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 4.0, size=(50, K)).astype(np.float32)
    u = rng.standard_normal((50, 1, K))
    params = DefenseParams(base_variance=0.3)
    louder = replace(params, base_variance=0.6)
    before = apply_dynanoise(z, params, u).probabilities
    after = apply_dynanoise(z, louder, u).probabilities
    solved = difference_parameter_change(before, after, params.temperature, 0.3, 0.6)
    centred = z - z.mean(axis=1, keepdims=True)
    assert np.abs(before - after).max() > 1e-3  # the answers did change
    np.testing.assert_allclose(solved, centred, atol=1e-4)


def test_every_shadow_gets_its_own_independent_key() -> None:
    """Issue: one attacker key for all shadows gave each example the same noise in
    every shadow. Two shadows' noise on the same rows must be uncorrelated."""
    params = DefenseParams(base_variance=1.0, lambda_scale=0.0, temperature=1.0)
    (keyed,) = build_defenses(["dynanoise_keyed"], params=params, secret=b"server" * 6)
    first, second = attacker_copies(keyed, ["shadow-a", "shadow-b"], seed=0, repeat=0)
    assert isinstance(first, DynaNoiseDefense) and isinstance(second, DynaNoiseDefense)
    assert first.secret != second.secret != keyed.secret
    assert first.params == second.params == keyed.params
    z = np.zeros((2000, K), np.float32)
    x = np.random.default_rng(3).random((2000, 8)).astype(np.float32)
    rng = np.random.default_rng(0)
    noise_a = recover_logits(first(z, x, rng), 1.0)
    noise_b = recover_logits(second(z, x, rng), 1.0)
    correlation = np.corrcoef(noise_a.ravel(), noise_b.ravel())[0, 1]
    assert abs(correlation) < 0.03  # ~N(0, 1/sqrt(20000)): 0.007 sd
    np.testing.assert_array_equal(first(z, x, rng), first(z, x, rng))  # still keyed


def test_fresh_noise_has_no_key_to_copy() -> None:
    (fresh,) = build_defenses(["dynanoise_fresh"], params=DefenseParams(noise_mode=NoiseMode.FRESH))
    copies = attacker_copies(fresh, ["a", "b"], seed=0, repeat=0)
    assert all(c.parameters() == fresh.parameters() for c in copies)


@pytest.mark.parametrize("global_variance", [False, True])
def test_leave_one_out_lira_equals_lira_without_the_target_among_its_shadows(
    global_variance: bool,
) -> None:
    rng = np.random.default_rng(4)
    n_models, n_rows = 8, 30
    shadow_phi = rng.normal(size=(n_models, n_rows))
    mask = np.zeros((n_models, n_rows), bool)
    for i in range(0, n_models, 2):
        mask[i, rng.permutation(n_rows)[: n_rows // 2]] = True
        mask[i + 1] = ~mask[i]
    target_phi = rng.normal(size=(n_models, n_rows))
    online, offline = lira_leave_one_out(
        target_phi, shadow_phi, mask, np.arange(n_models), global_variance=global_variance
    )
    for t in range(n_models):
        keep = np.arange(n_models) != t
        args = (target_phi[t], shadow_phi[keep], mask[keep])
        np.testing.assert_allclose(online[t], lira_online(*args, global_variance=global_variance))
        np.testing.assert_allclose(offline[t], lira_offline(*args, global_variance=global_variance))
    outside, _ = lira_leave_one_out(target_phi[:1], shadow_phi, mask, [-1])
    np.testing.assert_allclose(outside[0], lira_online(target_phi[0], shadow_phi, mask))


def test_logit_margin_is_the_logit_scaled_confidence() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(size=(40, K))
    y = rng.integers(0, K, 40)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p_y = p[np.arange(40), y]
    np.testing.assert_allclose(logit_margin(z, y), np.log(p_y) - np.log1p(-p_y), rtol=1e-9)


def test_leave_one_out_references_do_not_leak_membership_by_themselves() -> None:
    """Targets whose output ignores membership, each left out of its own shadows: with
    the target alone left out, members would have one IN reference fewer than
    non-members and RMIA's mean over references would read AUC ~0.55 (measured)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(6)
    n_models, n_rows = 8, 2000
    mask = np.zeros((n_models, n_rows), bool)
    for i in range(0, n_models, 2):
        mask[i, rng.permutation(n_rows)[: n_rows // 2]] = True
        mask[i + 1] = ~mask[i]
    y = rng.integers(0, K, n_rows)
    difficulty = rng.normal(0.0, 2.0, n_rows)

    def logits(boost: np.ndarray) -> np.ndarray:
        z = rng.normal(0.0, 0.5, (n_models, n_rows, K))
        z[:, np.arange(n_rows), y] += difficulty + boost
        return z

    shadows = logits(1.5 * mask)
    targets = logits(np.zeros((n_models, n_rows)))
    scores = reference_scores(targets, shadows, mask, np.arange(n_models), y, "repeat", 1)
    for key, value in scores.items():
        assert roc_auc_score(mask.ravel(), value.ravel()) == pytest.approx(0.5, abs=0.02), key


def test_a_constant_feature_scores_every_pair_alike() -> None:
    """Keyed noise answers exact repeats identically: the spread is 0 everywhere. No
    rounding residue of the leave-one-out sums may turn that into a membership signal."""
    rng = np.random.default_rng(7)
    mask = np.zeros((6, 50), bool)
    for i in range(0, 6, 2):
        mask[i, rng.permutation(50)[:25]] = True
        mask[i + 1] = ~mask[i]
    flat = np.full((6, 50), np.log(1e-12))
    online, offline = lira_leave_one_out(flat, flat, mask, balanced_exclusions(np.arange(6)))
    assert np.ptp(online) == 0.0 and np.ptp(offline) == 0.0
