"""The DynaNoise math, checked against the spec's formulas (statistically where random)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.defense import (
    DefenseParams,
    DirectNormals,
    InvalidParameters,
    NoiseMode,
    NoiseSource,
    Sensitivity,
    apply_dynanoise,
    defend,
    keyed_seeds,
    keyed_standard_normal,
    sensitivity,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("measure", list(Sensitivity))
def test_sensitivity_is_one_for_one_hot_and_zero_for_uniform(measure: Sensitivity) -> None:
    one_hot = np.array([[1e4, 0.0, 0.0, 0.0]])
    uniform = np.zeros((1, 4))
    assert sensitivity(one_hot, measure)[0] == pytest.approx(1.0, abs=1e-9)
    assert sensitivity(uniform, measure)[0] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("measure", list(Sensitivity))
def test_sensitivity_stays_in_unit_interval(measure: Sensitivity) -> None:
    logits = _rng(1).normal(scale=20.0, size=(2000, 10))
    risk = sensitivity(logits, measure)
    assert np.all((risk >= 0) & (risk <= 1))
    assert risk.min() < 0.5 < risk.max()


def test_entropy_sensitivity_matches_definition() -> None:
    logits = np.array([[2.0, 1.0, 0.0]])
    p = np.exp(logits) / np.exp(logits).sum()
    expected = 1 + (p * np.log(p)).sum() / np.log(3)
    assert sensitivity(logits)[0] == pytest.approx(expected, rel=1e-12)


def test_temperature_alone_keeps_the_argmax() -> None:
    logits = _rng(2).normal(scale=5.0, size=(500, 10))
    params = DefenseParams(base_variance=0.0, temperature=37.0)
    out = apply_dynanoise(logits, params, None)
    np.testing.assert_array_equal(out.probabilities.argmax(axis=1), logits.argmax(axis=1))


def test_noise_variance_matches_formula() -> None:
    # Recover the added noise from the output: T * log p = z + e + c (per row),
    # so centered log-ratios give e up to its row mean. With k classes the
    # centered noise has variance sigma^2 (1 - 1/k) per coordinate.
    params = DefenseParams(base_variance=0.3, lambda_scale=2.0, temperature=1.0)
    k, n = 10, 20_000
    logits = np.tile(np.array([[6.0, 1.0, 0, 0, 0, 0, 0, 0, 0, -1.0]]), (n, 1))
    out = apply_dynanoise(logits, params, NoiseSource(DirectNormals(_rng(3))).draws(params, n, k))
    log_p = np.log(out.probabilities.astype(np.float64))
    noise = log_p - logits
    noise -= noise.mean(axis=1, keepdims=True)
    risk = sensitivity(logits[:1])[0]
    expected = 0.3 * (1 + 2.0 * risk) * (1 - 1 / k)
    # Sample variance of n*k draws: relative standard error ~ sqrt(2 / (n k)) = 0.3 %.
    assert noise.var() == pytest.approx(expected, rel=0.03)
    np.testing.assert_allclose(out.noise_std, np.sqrt(0.3 * (1 + 2.0 * risk)))


def test_outputs_are_finite_and_sum_to_one_for_extreme_logits() -> None:
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]])
    for mode in NoiseMode:
        params = DefenseParams(noise_mode=mode, ensemble_size=4)
        out = defend(logits, params, rng=_rng(4), secret=b"s" * 32, model_id="m", inputs=logits)
        assert np.all(np.isfinite(out.probabilities))
        np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_ensemble_averaging_reduces_the_spread() -> None:
    logits = np.tile(np.array([[3.0, 1.0, 0.0, -1.0]]), (4000, 1))
    spreads = {}
    for m in (1, 16):
        params = DefenseParams(base_variance=1.0, temperature=1.0, ensemble_size=m)
        out = defend(logits, params, rng=_rng(5))
        spreads[m] = out.probabilities[:, 0].std()
    assert spreads[16] < 0.5 * spreads[1]


def test_keyed_noise_repeats_for_identical_input_and_differs_otherwise() -> None:
    inputs = _rng(6).normal(size=(3, 64)).astype(np.float32)
    logits = _rng(7).normal(size=(3, 10))
    params = DefenseParams(noise_mode=NoiseMode.KEYED)

    def run(secret: bytes, x: np.ndarray, model: str = "digits@1") -> np.ndarray:
        return defend(logits, params, secret=secret, model_id=model, inputs=x).probabilities

    first = run(b"a" * 32, inputs)
    np.testing.assert_array_equal(first, run(b"a" * 32, inputs.copy()))
    assert not np.allclose(first, run(b"b" * 32, inputs))  # other tenant
    assert not np.allclose(first, run(b"a" * 32, inputs, "other@1"))  # other model
    changed = inputs.copy()
    changed[1, 0] += 1e-3
    other = run(b"a" * 32, changed)
    np.testing.assert_array_equal(first[[0, 2]], other[[0, 2]])  # rows are independent
    assert not np.allclose(first[1], other[1])


def _centred_logits(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """T log p, centred per row: the noisy logits z + sigma e, up to a row constant."""
    log_p = np.log(np.asarray(probabilities, dtype=np.float64))
    return temperature * (log_p - log_p.mean(axis=1, keepdims=True))


def test_two_keyed_answers_around_a_base_variance_change_no_longer_give_the_logits() -> None:
    """Issue 13: with draws kept across a base_variance change, c1 = c + s1 e and
    c2 = c + s2 e solve for c = (rho c1 - c2) / (rho - 1) exactly (error ~1e-6). Seeds
    bound to the parameters draw new noise instead: the solution is off by about the
    noise itself."""
    rng = _rng(2)
    z = rng.normal(0.0, 4.0, size=(200, 10)).astype(np.float32)
    x = rng.random((200, 8)).astype(np.float32)
    before = DefenseParams(base_variance=0.3, lambda_scale=0.0, noise_mode=NoiseMode.KEYED)
    after = DefenseParams(base_variance=0.6, lambda_scale=0.0, noise_mode=NoiseMode.KEYED)

    def answer(params: DefenseParams) -> np.ndarray:
        out = defend(z, params, secret=b"s" * 32, model_id="m@1", inputs=x)
        return np.asarray(out.probabilities)

    first = answer(before)
    c1 = _centred_logits(first, before.temperature)
    c2 = _centred_logits(answer(after), after.temperature)
    rho = np.sqrt(after.base_variance / before.base_variance)
    solved = (rho * c1 - c2) / (rho - 1.0)
    clean = z - z.mean(axis=1, keepdims=True)
    error = np.abs(solved - clean)
    # Independent draws: solved - c = (rho s1 e1 - s2 e2) / (rho - 1), about 3.3 s1 a value.
    assert error.mean() > 0.5 * np.sqrt(before.base_variance)
    assert np.median(error) > 1e-2
    # The same parameters, the same answers, to the bit; and back to them, the same again.
    np.testing.assert_array_equal(answer(before), first)
    np.testing.assert_array_equal(answer(replace(after, base_variance=0.3)), first)


@pytest.mark.parametrize(
    "change",
    [
        {"base_variance": 0.31},
        {"lambda_scale": 1.0},
        {"temperature": 9.0},
        {"ensemble_size": 2},
        {"sensitivity": Sensitivity.MARGIN},
    ],
)
def test_keyed_seeds_are_bound_to_every_parameter(change: dict[str, object]) -> None:
    x = _rng(4).random((50, 6)).astype(np.float32)
    params = DefenseParams(noise_mode=NoiseMode.KEYED)
    seeds = keyed_seeds(b"k" * 32, "m@1", x, params)
    other = keyed_seeds(b"k" * 32, "m@1", x, replace(params, **change))  # type: ignore[arg-type]
    assert not np.isin(other, seeds).any()


def test_keyed_seeds_of_equal_parameters_are_equal() -> None:
    x = _rng(4).random((5, 6)).astype(np.float32)
    a = DefenseParams(base_variance=1, lambda_scale=0.0, ensemble_size=2, noise_mode="keyed")  # type: ignore[arg-type]
    b = DefenseParams(
        base_variance=1.0, lambda_scale=-0.0, ensemble_size=2, noise_mode=NoiseMode.KEYED
    )
    assert a.canonical() == b.canonical()
    np.testing.assert_array_equal(keyed_seeds(b"k", "m", x, a), keyed_seeds(b"k", "m", x, b))


def test_noise_source_draws_anew_when_a_tenants_parameters_change() -> None:
    """The serving path keeps one seeder per (secret, model): a parameter change must
    replace it, and a reloaded tenant with the same values must keep its answers."""
    source = NoiseSource(DirectNormals(None))
    x = _rng(5).random((20, 6)).astype(np.float32)
    params = DefenseParams(base_variance=0.3, noise_mode=NoiseMode.KEYED)

    def draws(p: DefenseParams) -> np.ndarray:
        out = source.draws(p, 20, 10, inputs=x, secret=b"t" * 32, model_id="m@1")
        assert out is not None
        return np.array(out)

    first = draws(params)
    louder = draws(replace(params, base_variance=0.6))
    assert np.abs(first - louder).min() > 0.0
    np.testing.assert_array_equal(draws(replace(params)), first)  # equal values, new object
    np.testing.assert_array_equal(draws(params), first)


def test_keyed_seed_ignores_the_sign_of_zero() -> None:
    a = np.zeros((1, 4), dtype=np.float32)
    np.testing.assert_array_equal(keyed_seeds(b"k", "m", a), keyed_seeds(b"k", "m", -a))


def test_keyed_normals_are_standard_normal() -> None:
    seeds = np.arange(50_000, dtype=np.uint64)
    draws = keyed_standard_normal(seeds, 2, 5).ravel()
    assert draws.shape == (500_000,)
    assert abs(draws.mean()) < 0.01  # standard error 0.0014
    assert draws.var() == pytest.approx(1.0, abs=0.01)
    assert np.mean(np.abs(draws) > 1.96) == pytest.approx(0.05, abs=0.002)
    # neighbouring coordinates are uncorrelated
    pairs = keyed_standard_normal(seeds, 1, 2)[:, 0, :]
    assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 0.02


def test_fresh_noise_differs_between_calls() -> None:
    logits = np.array([[2.0, 1.0, 0.0]])
    params = DefenseParams()
    rng = np.random.default_rng()
    first = defend(logits, params, rng=rng).probabilities
    second = defend(logits, params, rng=rng).probabilities
    assert not np.array_equal(first, second)


@pytest.mark.parametrize(
    "changes",
    [
        {"base_variance": -0.1},
        {"lambda_scale": -1.0},
        {"temperature": 0.0},
        {"ensemble_size": 0},
        {"ensemble_size": 65},
        {"ensemble_size": 1.5},
        {"base_variance": float("nan")},
        {"temperature": float("inf")},
        {"sensitivity": "nope"},
        {"noise_mode": "sometimes"},
    ],
)
def test_invalid_parameters_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises((InvalidParameters, ValueError)):
        DefenseParams(**changes)  # type: ignore[arg-type]


def test_defaults_are_the_paper_setting() -> None:
    params = DefenseParams()
    assert (params.base_variance, params.lambda_scale, params.temperature) == (0.3, 2.0, 10.0)
    assert params.ensemble_size == 1
    assert params.sensitivity is Sensitivity.ENTROPY
    assert params.noise_mode is NoiseMode.FRESH
