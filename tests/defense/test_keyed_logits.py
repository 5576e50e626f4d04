"""keyed_logits noise: seeded by the clean logits quantized to a step of sigma0, so
near-duplicates share their draws and anything else draws independently; the
canonical parameter bytes that key every keyed draw."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import numpy as np
import pytest

from service.defense import (
    DefenseParams,
    DirectNormals,
    NoiseMode,
    NoiseSource,
    OutputMode,
    Sensitivity,
    defend,
    quantized_logits,
)

SECRET = b"k" * 32
MODEL = "syn@1"
N_ROWS, N_CLASSES = 1000, 10
KEYED_LOGITS = DefenseParams(noise_mode=NoiseMode.KEYED_LOGITS)
STEP = float(np.sqrt(KEYED_LOGITS.base_variance))  # LOGIT_KEY_STEP sigma0, LOGIT_KEY_STEP = 1


def _logits(seed: int = 0, n: int = N_ROWS) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=4.0, size=(n, N_CLASSES))


def _draws(
    logits: np.ndarray,
    params: DefenseParams = KEYED_LOGITS,
    secret: bytes = SECRET,
    model_id: str = MODEL,
    **kwargs: Any,
) -> np.ndarray:
    draws = NoiseSource(DirectNormals(None)).draws(
        params,
        logits.shape[0],
        logits.shape[1],
        secret=secret,
        model_id=model_id,
        logits=logits,
        **kwargs,
    )
    assert draws is not None
    return np.asarray(draws)


def _same_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.all(a.reshape(len(a), -1) == b.reshape(len(b), -1), axis=1)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_exact_repeats_get_identical_draws() -> None:
    logits = _logits()
    np.testing.assert_array_equal(_draws(logits), _draws(logits.copy()))


def test_exact_repeats_get_identical_answers_through_defend() -> None:
    logits = _logits(1, n=50)
    first = defend(logits, KEYED_LOGITS, secret=SECRET, model_id=MODEL)
    again = defend(logits.copy(), KEYED_LOGITS, secret=SECRET, model_id=MODEL)
    np.testing.assert_array_equal(first.probabilities, again.probabilities)


@pytest.mark.parametrize("seed", range(3))
def test_logits_moved_far_less_than_a_step_keep_their_draws(seed: int) -> None:
    logits = _logits(seed)
    moved = logits + np.random.default_rng(10 + seed).choice([-1e-6, 1e-6], size=logits.shape)
    same = _same_rows(_draws(logits), _draws(moved))
    assert same.mean() >= 0.99, same.mean()


def test_inputs_do_not_matter_only_the_logits() -> None:
    """Different input bytes with the same clean logits (a near-duplicate): same draws."""
    logits = _logits(2)
    inputs = np.random.default_rng(3).normal(size=(N_ROWS, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        _draws(logits, inputs=inputs), _draws(logits, inputs=inputs + 1e-3)
    )


@pytest.mark.parametrize("steps", [3.0, 5.5, -7.0])
def test_logits_moved_by_several_steps_draw_independently(steps: float) -> None:
    logits = _logits(4)
    first, moved = _draws(logits), _draws(logits + steps * STEP)
    assert not _same_rows(first, moved).any()
    # 10,000 pairs: an independent pair's sample correlation has sd 0.01.
    assert abs(_correlation(first, moved)) < 0.04


def test_draws_are_standard_normal() -> None:
    draws = _draws(_logits(5))
    assert draws.shape == (N_ROWS, 1, N_CLASSES)
    assert abs(draws.mean()) < 4 * 0.01 and abs(draws.std() - 1.0) < 4 * 0.01 / np.sqrt(2)


def test_quantization_cells_are_floor_of_logits_over_sigma0() -> None:
    params = DefenseParams(base_variance=0.25, noise_mode=NoiseMode.KEYED_LOGITS)
    logits = np.array([[0.0, 0.49, 0.5, -0.01, 1.26]])
    np.testing.assert_array_equal(quantized_logits(logits, params), [[0, 0, 1, -1, 2]])


CHANGES: dict[str, Any] = {
    "base_variance": 0.31,
    "lambda_scale": 2.5,
    "temperature": 9.0,
    "ensemble_size": 2,
    "sensitivity": Sensitivity.TOP1,
    "confidence_buckets": 5,
}


def test_every_parameter_that_keeps_the_noise_on_is_covered() -> None:
    """A new field must be added to CHANGES (or to the lossy/noise-mode cases below)."""
    names = {f.name for f in fields(DefenseParams)}
    assert names == {*CHANGES, "noise_mode", "output_mode"}


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_change_of_any_parameter_changes_the_draws(name: str) -> None:
    logits = _logits(6)
    before = _draws(logits)
    after = _draws(logits, replace(KEYED_LOGITS, **{name: CHANGES[name]}))
    # Ensemble members: compare the first (the shapes differ for ensemble_size).
    assert not _same_rows(before[:, 0], after[:, 0]).any()
    assert abs(_correlation(before[:, 0], after[:, 0])) < 0.04


def test_the_noise_mode_is_bound_into_the_key() -> None:
    """keyed over the cell bytes differs from keyed_logits over the same cells."""
    logits = _logits(7)
    cells = quantized_logits(logits, KEYED_LOGITS)
    keyed = _draws(logits, replace(KEYED_LOGITS, noise_mode=NoiseMode.KEYED), inputs=cells)
    assert not _same_rows(keyed, _draws(logits)).any()


@pytest.mark.parametrize("mode", [OutputMode.CALIBRATED_LABEL, OutputMode.COARSE])
def test_lossy_modes_draw_no_noise(mode: OutputMode) -> None:
    params = replace(KEYED_LOGITS, output_mode=mode)
    assert not params.adds_noise
    assert (
        NoiseSource(DirectNormals(None)).draws(
            params, 3, N_CLASSES, secret=SECRET, logits=_logits(n=3)
        )
        is None
    )


def test_different_secrets_give_uncorrelated_draws() -> None:
    logits = _logits(8)
    first, second = _draws(logits), _draws(logits, secret=b"s" * 32)
    assert not _same_rows(first, second).any()
    assert abs(_correlation(first, second)) < 0.04


def test_different_models_give_uncorrelated_draws() -> None:
    logits = _logits(9)
    first, second = _draws(logits), _draws(logits, model_id="other@1")
    assert not _same_rows(first, second).any()
    assert abs(_correlation(first, second)) < 0.04


def test_keyed_logits_needs_the_secret_and_the_logits() -> None:
    source = NoiseSource(DirectNormals(None))
    with pytest.raises(ValueError, match="secret"):
        source.draws(KEYED_LOGITS, 2, N_CLASSES, logits=_logits(n=2))
    with pytest.raises(ValueError, match="clean logits"):
        source.draws(KEYED_LOGITS, 2, N_CLASSES, secret=SECRET)


def _paper_lines(noise_mode: str) -> str:
    return (
        f"base_variance={(0.3).hex()}\n"
        f"lambda_scale={(2.0).hex()}\n"
        f"temperature={(10.0).hex()}\n"
        "ensemble_size=1\n"
        "sensitivity=entropy\n"
        f"noise_mode={noise_mode}\n"
    )


@pytest.mark.parametrize("noise_mode", list(NoiseMode))
def test_default_canonical_bytes_leave_out_the_later_fields(noise_mode: NoiseMode) -> None:
    canonical = DefenseParams(noise_mode=noise_mode).canonical()
    assert canonical == _paper_lines(noise_mode.value).encode()
    assert b"output_mode" not in canonical and b"confidence_buckets" not in canonical


def test_default_keyed_canonical_bytes_are_pinned() -> None:
    """The bytes every keyed tenant's draws hang on: a change re-draws all their noise."""
    assert DefenseParams(noise_mode=NoiseMode.KEYED).canonical() == (
        b"base_variance=0x1.3333333333333p-2\n"
        b"lambda_scale=0x1.0000000000000p+1\n"
        b"temperature=0x1.4000000000000p+3\n"
        b"ensemble_size=1\n"
        b"sensitivity=entropy\n"
        b"noise_mode=keyed\n"
    )


def test_a_coarse_settings_canonical_bytes_name_the_mode_and_its_buckets() -> None:
    coarse = DefenseParams(
        noise_mode=NoiseMode.KEYED, output_mode=OutputMode.COARSE, confidence_buckets=3
    )
    assert (
        coarse.canonical()
        == (_paper_lines("keyed") + "output_mode=coarse\nconfidence_buckets=3\n").encode()
    )
    default_buckets = DefenseParams(output_mode=OutputMode.COARSE).canonical()
    assert b"output_mode=coarse\n" in default_buckets
    assert default_buckets != coarse.canonical()


@pytest.mark.parametrize("mode", list(OutputMode))
@pytest.mark.parametrize("base_variance", [0.0, 0.3])
def test_only_noiseless_dynanoise_releases_clean_outputs(
    mode: OutputMode, base_variance: float
) -> None:
    params = DefenseParams(base_variance=base_variance, output_mode=mode)
    assert params.releases_clean_outputs == (mode is OutputMode.DYNANOISE and base_variance == 0)
    assert params.lossy == (mode is not OutputMode.DYNANOISE)
    assert params.adds_noise == (mode is OutputMode.DYNANOISE and base_variance > 0)


@pytest.mark.parametrize(
    ("mode", "buckets", "expected"),
    [
        (OutputMode.CALIBRATED_LABEL, 6, 1),
        (OutputMode.COARSE, 6, 6),
        (OutputMode.COARSE, 1, 1),
        (OutputMode.DYNANOISE, 6, 6),
    ],
)
def test_buckets_is_one_for_calibrated_label(mode: OutputMode, buckets: int, expected: int) -> None:
    assert DefenseParams(output_mode=mode, confidence_buckets=buckets).buckets == expected
