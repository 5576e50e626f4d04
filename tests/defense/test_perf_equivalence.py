"""The optimised defense equals a straightforward implementation of the spec's formulas.

The references below are written the obvious way (float64, one step per formula
line, Python ints for SplitMix64, the stdlib hmac) so that the fast paths
(the C kernel, pure Python for a few rows, class-major for few classes, float32
softmax for many) can be checked against them on every path and layout. Every
test runs twice: with the compiled kernel and with the Python code that replaces
it where no compiler was found at install time.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import math
import threading

import numpy as np
import pytest

from service.defense import (
    DefenseParams,
    NoiseMode,
    Sensitivity,
    apply_dynanoise,
    dynanoise,
    keyed_seeds,
    keyed_standard_normal,
    noise,
    sensitivity,
)
from service.defense.noise import KeyedSeeder, StandardNormalPool

MASK = (1 << 64) - 1
# The module, not the function of the same name that service.defense exports.
SENSITIVITY_MODULE = importlib.import_module("service.defense.sensitivity")


@pytest.fixture(autouse=True, params=["compiled", "python"])
def defense_code(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python":
        monkeypatch.setattr(dynanoise, "_kernel", None)
        monkeypatch.setattr(noise, "_kernel", None)
        monkeypatch.setattr(noise, "_keyed", None)
        monkeypatch.setattr(SENSITIVITY_MODULE, "_kernel", None)
    elif dynanoise._kernel is None:
        pytest.skip("no C kernel (tests/defense/test_kernel.py says why)")
    return str(request.param)


def reference_sensitivity(z: np.ndarray, measure: Sensitivity) -> np.ndarray:
    z = z.astype(np.float64)
    k = z.shape[1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if measure is Sensitivity.ENTROPY:
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(p), 0.0)
        return np.clip(1.0 + plogp.sum(axis=1) / np.log(k), 0.0, 1.0)
    if measure is Sensitivity.TOP1:
        return np.clip((p.max(axis=1) - 1.0 / k) / (1.0 - 1.0 / k), 0.0, 1.0)
    ordered = np.sort(p, axis=1)
    return np.clip(ordered[:, -1] - ordered[:, -2], 0.0, 1.0)


def reference_defense(z: np.ndarray, params: DefenseParams, draws: np.ndarray | None) -> np.ndarray:
    z = z.astype(np.float64)
    risk = reference_sensitivity(z, params.sensitivity)
    std = np.sqrt(params.base_variance * (1.0 + params.lambda_scale * risk))
    outputs = []
    for m in range(params.ensemble_size):
        noisy = z if draws is None else z + std[:, None] * draws[:, m, :]
        e = np.exp(
            noisy / params.temperature - (noisy / params.temperature).max(axis=1, keepdims=True)
        )
        outputs.append(e / e.sum(axis=1, keepdims=True))
    return np.mean(outputs, axis=0)


def reference_normals(seed: int, count: int) -> list[float]:
    """SplitMix64 on Python ints, then Box-Muller, as noise.py documents it."""
    pairs = (count + 1) // 2
    uniforms = []
    for j in range(2 * pairs):
        x = (seed + (j + 1) * 0x9E3779B97F4A7C15) & MASK
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
        x ^= x >> 31
        uniforms.append(((x >> 11) + 0.5) / 2.0**53)
    radius = [math.sqrt(-2.0 * math.log(u)) for u in uniforms[:pairs]]
    angle = [2.0 * math.pi * u for u in uniforms[pairs:]]
    values = [r * math.cos(a) for r, a in zip(radius, angle, strict=True)]
    values += [r * math.sin(a) for r, a in zip(radius, angle, strict=True)]
    return values[:count]


def _class_major(draws: np.ndarray) -> np.ndarray:
    """The same draws, stored transposed (as the noise sources lay them out)."""
    n, m, k = draws.shape
    return np.ascontiguousarray(draws.reshape(n, m * k).T).T.reshape(n, m, k)


# (n, k, ensemble_size): the pure-Python path, the class-major path, the row-major path.
SHAPES = [(1, 2, 1), (1, 10, 1), (4, 10, 1), (3, 7, 1), (64, 10, 1), (300, 64, 1),
          (1, 100, 1), (50, 1000, 1), (20, 10, 3), (5, 65, 2)]  # fmt: skip


@pytest.mark.parametrize(("n", "k", "ensemble"), SHAPES)
@pytest.mark.parametrize("measure", list(Sensitivity))
def test_defense_matches_the_reference_on_every_path(
    n: int, k: int, ensemble: int, measure: Sensitivity
) -> None:
    rng = np.random.default_rng(n * 1000 + k)
    logits = rng.normal(scale=6.0, size=(n, k)).astype(np.float32)
    params = DefenseParams(ensemble_size=ensemble, sensitivity=measure, temperature=3.0)
    draws = rng.standard_normal((n, ensemble, k))
    expected = reference_defense(logits, params, draws)
    for layout in (draws, _class_major(draws)):
        out = apply_dynanoise(logits, params, layout)
        assert out.probabilities.dtype == np.float32
        assert out.probabilities.flags.c_contiguous
        np.testing.assert_allclose(out.probabilities, expected, rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(
            out.sensitivity, reference_sensitivity(logits, measure), atol=1e-12
        )
        np.testing.assert_allclose(
            out.noise_std,
            np.sqrt(0.3 * (1 + 2.0 * reference_sensitivity(logits, measure))),
            rtol=1e-12,
        )


@pytest.mark.parametrize(("n", "k"), [(1, 10), (5, 10), (40, 10), (3, 200)])
def test_temperature_only_matches_the_reference(n: int, k: int) -> None:
    logits = np.random.default_rng(k).normal(scale=4.0, size=(n, k)).astype(np.float32)
    params = DefenseParams(base_variance=0.0, temperature=7.0)
    out = apply_dynanoise(logits, params, None)
    np.testing.assert_allclose(
        out.probabilities, reference_defense(logits, params, None), rtol=2e-5
    )
    np.testing.assert_array_equal(out.noise_std, 0.0)


def test_extreme_logits_stay_finite_on_every_path() -> None:
    rows = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [3e38, -3e38, 0.0]], dtype=np.float32)
    for n, k in [(1, 3), (2, 3), (3, 3)]:
        for ensemble in (1, 3):
            logits = rows[:n, :k]
            params = DefenseParams(ensemble_size=ensemble, base_variance=1e4)
            draws = np.random.default_rng(0).standard_normal((n, ensemble, k))
            out = apply_dynanoise(logits, params, draws)
            assert np.all(np.isfinite(out.probabilities))
            np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(("k", "ensemble"), [(100, 1), (10, 2)])
def test_float32_softmax_falls_back_to_float64_out_of_range(k: int, ensemble: int) -> None:
    # (z + sigma e) / T overflows float32 here (3e38 / 0.01), not float64.
    logits = np.zeros((2, k), dtype=np.float32)
    logits[:, 0] = 3e38
    logits[1, 1] = -3e38
    params = DefenseParams(temperature=0.01, ensemble_size=ensemble)
    draws = np.random.default_rng(9).standard_normal((2, ensemble, k))
    out = apply_dynanoise(logits, params, draws)
    assert np.all(np.isfinite(out.probabilities))
    np.testing.assert_allclose(
        out.probabilities, reference_defense(logits, params, draws), atol=1e-7
    )


def test_a_row_gets_the_same_answer_alone_and_inside_a_batch() -> None:
    # Pure-Python path (alone) and class-major path (batch) run the same operations.
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=5.0, size=(200, 10)).astype(np.float32)
    draws = _class_major(rng.standard_normal((200, 1, 10)))
    params = DefenseParams()
    batch = apply_dynanoise(logits, params, draws).probabilities
    for i in (0, 17, 199):
        alone = apply_dynanoise(logits[i : i + 1], params, draws[i : i + 1]).probabilities
        np.testing.assert_allclose(alone[0], batch[i], rtol=1e-6)


def test_sensitivity_matches_the_reference() -> None:
    logits = np.random.default_rng(4).normal(scale=8.0, size=(500, 12))
    for measure in Sensitivity:
        np.testing.assert_allclose(
            sensitivity(logits, measure), reference_sensitivity(logits, measure), atol=1e-12
        )


@pytest.mark.parametrize(("ensemble", "k"), [(1, 10), (1, 7), (3, 5), (1, 65), (2, 100)])
def test_keyed_normals_match_splitmix_and_box_muller(ensemble: int, k: int) -> None:
    seeds = np.array([0, 1, 2**63 + 12345, 2**64 - 1, 987654321], dtype=np.uint64)
    draws = keyed_standard_normal(seeds, ensemble, k)
    assert draws.shape == (5, ensemble, k)
    for i, seed in enumerate(seeds.tolist()):
        np.testing.assert_allclose(
            draws[i].ravel(), reference_normals(seed, ensemble * k), rtol=1e-12
        )


def reference_parameter_key(secret: bytes, params: DefenseParams) -> bytes:
    """HMAC-SHA256(secret, context || every parameter as name=value lines), spelled out."""
    text = (
        f"base_variance={float(params.base_variance).hex()}\n"
        f"lambda_scale={float(params.lambda_scale).hex()}\n"
        f"temperature={float(params.temperature).hex()}\n"
        f"ensemble_size={int(params.ensemble_size)}\n"
        f"sensitivity={params.sensitivity.value}\n"
        f"noise_mode={params.noise_mode.value}\n"
    )
    context = b"dynanoise keyed-noise parameter key v1\x00"
    return hmac.digest(secret, context + text.encode(), hashlib.sha256)


@pytest.mark.parametrize("secret", [b"s" * 32, b"", b"x" * 100])
@pytest.mark.parametrize(
    "params",
    [
        DefenseParams(noise_mode=NoiseMode.KEYED),
        DefenseParams(
            base_variance=1.25,
            lambda_scale=0.0,
            temperature=3.0,
            ensemble_size=4,
            sensitivity=Sensitivity.MARGIN,
            noise_mode=NoiseMode.KEYED,
        ),
    ],
)
def test_keyed_seeds_are_the_hmac_of_model_shape_and_row_under_the_parameter_key(
    secret: bytes, params: DefenseParams
) -> None:
    inputs = np.random.default_rng(5).normal(size=(4, 2, 3)).astype(np.float32)
    seeds = keyed_seeds(secret, "digits@1", inputs, params)
    seeder = KeyedSeeder(secret, "digits@1", params)
    np.testing.assert_array_equal(seeder.seeds(inputs), seeds)
    np.testing.assert_array_equal(seeder.seeds(inputs), seeds)  # the cached prefix state
    key = reference_parameter_key(secret, params)
    assert noise.parameter_key(secret, params) == key
    for i in range(4):
        message = b"digits@1\x00(2, 3)\x00" + inputs[i].tobytes()
        digest = hmac.digest(key, message, hashlib.sha256)
        assert int(seeds[i]) == int.from_bytes(digest[:8], "little")
    # Without parameters: the paper's setting in keyed mode.
    np.testing.assert_array_equal(
        keyed_seeds(secret, "digits@1", inputs),
        keyed_seeds(secret, "digits@1", inputs, DefenseParams(noise_mode=NoiseMode.KEYED)),
    )


def test_keyed_seeds_read_negative_zero_as_zero_in_any_dtype_and_layout() -> None:
    rng = np.random.default_rng(9)
    inputs = rng.normal(size=(5, 3, 4)).astype(np.float32)
    inputs[1, 0, 0] = 0.0
    inputs[2, 1, 2] = 0.0
    signed = inputs.copy()
    signed[1, 0, 0] = -0.0
    signed[2, 1, 2] = -0.0
    seeder = KeyedSeeder(b"s" * 32, "m@1")
    expected = seeder.seeds(inputs)
    np.testing.assert_array_equal(seeder.seeds(signed), expected)
    np.testing.assert_array_equal(seeder.seeds(signed.astype(np.float64)), expected)
    strided = np.ascontiguousarray(signed.transpose(2, 1, 0)).transpose(2, 1, 0)
    np.testing.assert_array_equal(seeder.seeds(strided), expected)
    assert seeder.seeds(inputs[:0]).shape == (0,)
    key = reference_parameter_key(b"s" * 32, DefenseParams(noise_mode=NoiseMode.KEYED))
    for i in range(5):  # the stdlib's HMAC of the +0.0 bytes
        message = b"m@1\x00(3, 4)\x00" + inputs[i].tobytes()
        digest = hmac.digest(key, message, hashlib.sha256)
        assert int(expected[i]) == int.from_bytes(digest[:8], "little")


def test_normal_pool_serves_every_draw_once_across_threads() -> None:
    pool = StandardNormalPool(np.random.default_rng(6), block_size=1000)
    taken: list[np.ndarray] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(200):
            values = pool.take(7).copy()
            with lock:
                taken.append(values)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = np.concatenate(taken)
    assert values.size == 4 * 200 * 7
    assert np.unique(values).size == values.size  # no value served twice
    assert abs(values.mean()) < 0.05
    assert values.var() == pytest.approx(1.0, abs=0.05)


def test_normal_pool_draws_have_the_requested_shape_in_any_layout() -> None:
    pool = StandardNormalPool(np.random.default_rng(7), block_size=64)
    for n, ensemble, k in [(3, 1, 10), (2, 4, 5), (1, 1, 100), (100, 1, 10)]:
        draws = pool.draws(n, ensemble, k)
        assert draws.shape == (n, ensemble, k)


def test_keyed_mode_through_defend_matches_the_reference() -> None:
    from service.defense import defend

    rng = np.random.default_rng(8)
    inputs = rng.normal(size=(6, 16)).astype(np.float32)
    logits = rng.normal(scale=3.0, size=(6, 10)).astype(np.float32)
    params = DefenseParams(noise_mode=NoiseMode.KEYED, ensemble_size=2)
    out = defend(logits, params, secret=b"k" * 32, model_id="m@1", inputs=inputs)
    seeds = keyed_seeds(b"k" * 32, "m@1", inputs, params)
    draws = np.array([reference_normals(int(s), 20) for s in seeds]).reshape(6, 2, 10)
    np.testing.assert_allclose(
        out.probabilities, reference_defense(logits, params, draws), rtol=2e-5
    )
