"""DynaNoise (Forough & Haddadi 2025): entropy-scaled Gaussian logit noise, then a
temperature softmax. Pure functions: arrays in, arrays out, randomness passed in.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from ._compiled import kernel as _kernel
from ._softmax import FloatArray
from .noise import DirectNormals, NoiseSource, class_major
from .params import DefenseParams, NoiseMode, OutputMode, Sensitivity
from .sensitivity import class_axis_sensitivity


class DefenseOutput(NamedTuple):
    """What the defense returns: the only probabilities that may leave the service,
    and per-row diagnostics for metrics (never the clean logits). A NamedTuple, not
    a frozen dataclass: it is built on every request and costs a third as much
    (bench/micro-timings.md)."""

    probabilities: NDArray[np.float32]  # (n, k), rows sum to 1
    sensitivity: NDArray[np.float64]  # R per row, in [0, 1]
    noise_std: NDArray[np.float64]  # sigma per row


def noise_variance(sensitivity_score: FloatArray, params: DefenseParams) -> NDArray[np.float64]:
    """sigma^2 = sigma0^2 * (1 + lambda * R): the variance, not the std, is scaled."""
    risk = np.asarray(sensitivity_score, dtype=np.float64)
    return params.base_variance * (1.0 + params.lambda_scale * risk)


# Batches with at most this many logits (and one ensemble member) are defended in
# plain Python floats: a numpy call has a fixed cost whatever its size and the
# vectorised path makes ~20 of them, several times what a 10-class row costs in
# Python (bench/micro-timings.md).
_PYTHON_MAX_VALUES = 40


def apply_dynanoise(
    logits: FloatArray,
    params: DefenseParams,
    standard_normal: FloatArray | None,
) -> DefenseOutput:
    """Defend a batch of clean logits z (n, k).

    R = sensitivity(z); sigma = sqrt(sigma0^2 (1 + lambda R));
    for m = 1..M: out_m = softmax((z + sigma * e_m) / T), e_m ~ N(0, I_k);
    output = mean_m out_m (probability space).

    ``standard_normal`` holds the draws e, shape (n, M, k); it may be None only
    when base_variance is 0 (temperature smoothing alone). Any memory layout works;
    the class-major one (see ``keyed_standard_normal``) is read fastest.
    """
    # The common case first, in as few steps as possible (this runs on every request):
    # one member, entropy sensitivity, moderate values, arrays in. The kernel checks
    # the shapes and dtypes itself.
    if (
        _kernel is not None
        and params.ensemble_size == 1
        and params.sensitivity is _ENTROPY
        and type(logits) is np.ndarray
        and params.temperature >= _MIN_FAST_TEMPERATURE
        and params.base_variance * (1.0 + params.lambda_scale) <= _MAX_FAST_VARIANCE
    ):
        if params.base_variance <= 0.0:  # no noise: any draws given are not used
            return _defend_compiled(logits, params, None)
        if type(standard_normal) is np.ndarray:
            return _defend_compiled(logits, params, standard_normal)
    z = np.asarray(logits)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError("logits must have shape (n, k) with k >= 2")
    n, k = z.shape
    draws = None
    if params.adds_noise:
        if standard_normal is None:
            raise ValueError("standard_normal draws are required when base_variance > 0")
        draws = np.asarray(standard_normal)
        if draws.shape != (n, params.ensemble_size, k):
            raise ValueError(
                f"standard_normal must have shape {(n, params.ensemble_size, k)}, got {draws.shape}"
            )
    # Extreme parameters (see _defend_extreme), tested inline: this runs on every request.
    if params.temperature < _MIN_FAST_TEMPERATURE or not (
        params.base_variance * (1.0 + params.lambda_scale) <= _MAX_FAST_VARIANCE
    ):
        return _defend_extreme(z, params, draws)
    single = params.ensemble_size == 1 or draws is None
    if single and params.sensitivity is Sensitivity.ENTROPY:
        if _kernel is not None:
            return _defend_compiled(z, params, draws)
        if n * k <= _PYTHON_MAX_VALUES:
            return _defend_in_python(z, params, draws)
    if single and class_major(1, k):
        return _defend_class_major(z, params, draws)
    return _defend_row_major(z, params, draws)


# Valid but extreme parameters (a T near 0, a variance near float64's limit) would
# overflow the fast paths, which divide by T before shifting by the row max: such
# tenants take the slower path below, which cannot produce inf - inf = NaN.
_MIN_FAST_TEMPERATURE = 1e-6
_MAX_FAST_VARIANCE = 1e12
_ENTROPY = Sensitivity.ENTROPY
_FRESH = NoiseMode.FRESH
_DYNANOISE = OutputMode.DYNANOISE
_MAX_STD = 1e100  # noise beyond this already makes every answer a random one-hot


def _defend_extreme(
    z: NDArray[np.generic], params: DefenseParams, draws: NDArray[np.floating] | None
) -> DefenseOutput:
    """The same defense in float64, overflow-proof: sigma = sqrt(sigma0^2) sqrt(1 + lambda R)
    (capped at 1e100), and softmax((x - max x) / T), which equals softmax(x / T)."""
    zz = np.asarray(z, dtype=np.float64)
    risk = class_axis_sensitivity(zz, params.sensitivity, axis=1)  # (n, 1)
    std = np.minimum(
        math.sqrt(params.base_variance) * np.sqrt(1.0 + params.lambda_scale * risk), _MAX_STD
    )
    noisy = zz[:, None, :] if draws is None else zz[:, None, :] + std[:, :, None] * draws
    with np.errstate(over="ignore", under="ignore"):
        scaled = (noisy - noisy.max(axis=2, keepdims=True)) / params.temperature
        _softmax_in_place(scaled, axis=2)
    mean = scaled.mean(axis=1)
    return DefenseOutput(
        np.ascontiguousarray(mean, dtype=np.float32), risk.reshape(-1), std.reshape(-1)
    )


def _defend_compiled(
    z: NDArray[np.generic], params: DefenseParams, draws: NDArray[np.floating] | None
) -> DefenseOutput:
    """``_defend_in_python`` in C (``_kernel.c``): the same arithmetic, the same bits."""
    assert _kernel is not None
    return _kernel.defend_entropy(
        z, draws, params.base_variance, params.lambda_scale, params.temperature, DefenseOutput
    )


def _defend_in_python(
    z: NDArray[np.generic], params: DefenseParams, draws: NDArray[np.floating] | None
) -> DefenseOutput:
    """The entropy-scaled defense for a few rows, one Python float at a time (M = 1).

    Same operations in the same order as the class-major path (sums accumulate
    class by class), so a row's answer does not depend on the batch it came in
    (to the last bit, wherever numpy's exp and log are the C library's).
    """
    exp = math.exp
    neg_inv_log_k = -1.0 / math.log(z.shape[1])
    base_variance = params.base_variance
    lambda_scale = params.lambda_scale
    temperature = params.temperature
    n, k = z.shape
    noise = draws.ravel().tolist() if draws is not None else None  # row i: [i k, (i + 1) k)
    probabilities: list[float] = []
    risks, stds = [], []
    for i, row in enumerate(z.tolist()):
        top = max(row)
        total = weighted = 0.0
        for v in row:
            shifted = v - top
            e = exp(shifted)
            total += e
            weighted += e * shifted
        risk = (math.log(total) - weighted / total) * neg_inv_log_k + 1.0
        risk = 0.0 if risk < 0.0 else 1.0 if risk > 1.0 else risk
        std = math.sqrt(base_variance * (1.0 + lambda_scale * risk))
        if noise is None:
            noisy = [v / temperature for v in row]
        else:
            g = noise[i * k : (i + 1) * k]
            noisy = [(v + std * e) / temperature for v, e in zip(row, g, strict=True)]
        top = max(noisy)
        exps = [exp(v - top) for v in noisy]
        total = sum(exps)
        probabilities.extend([v / total for v in exps])
        risks.append(risk)
        stds.append(std)
    diagnostics = np.array([risks, stds], dtype=np.float64)
    return DefenseOutput(
        np.array(probabilities, dtype=np.float32).reshape(n, k), diagnostics[0], diagnostics[1]
    )


def _defend_class_major(
    z: NDArray[np.generic], params: DefenseParams, draws: NDArray[np.floating] | None
) -> DefenseOutput:
    """M = 1, few classes: work on the transposed (k, n) batch, where every per-row
    reduction is a sum or max across k contiguous rows of length n."""
    zt = np.array(z.T, dtype=np.float64, order="C")
    risk = class_axis_sensitivity(zt, params.sensitivity, axis=0)  # (1, n)
    std = np.sqrt(noise_variance(risk, params))
    noisy: NDArray[np.floating]
    if draws is None:
        noisy = zt
    else:
        noisy = draws[:, 0, :].T * std  # std * e, then z + std * e, as in the formula
        noisy += zt
    noisy /= params.temperature
    _softmax_in_place(noisy, axis=0)
    probabilities = np.ascontiguousarray(noisy.T, dtype=np.float32)
    return DefenseOutput(probabilities, risk.reshape(-1), std.reshape(-1))


def _defend_row_major(
    z: NDArray[np.generic], params: DefenseParams, draws: NDArray[np.floating] | None
) -> DefenseOutput:
    """Any M, any k: rows as given, the ensemble as a middle axis (n, M, k).

    R and sigma in float64; the noise addition and the final softmax, where the
    work grows with n M k, in float32 (the output's precision; exp is about twice
    as fast), unless (z + sigma e) / T leaves float32's range, when the softmax is
    redone in float64.
    """
    risk = class_axis_sensitivity(np.asarray(z, dtype=np.float64), params.sensitivity, axis=1)
    std = np.sqrt(noise_variance(risk, params))  # (n, 1)
    with np.errstate(over="ignore", invalid="ignore"):  # detected below, then redone
        noisy = _noisy_logits(z, std, params, draws, np.float32)
        top = noisy.max(axis=2, keepdims=True)
    if not np.isfinite(top).all():
        noisy = _noisy_logits(z, std, params, draws, np.float64)
        top = noisy.max(axis=2, keepdims=True)
    _softmax_in_place(noisy, axis=2, top=top)
    mean = noisy.mean(axis=1) if noisy.shape[1] > 1 else noisy[:, 0, :]
    return DefenseOutput(
        np.ascontiguousarray(mean, dtype=np.float32), risk.reshape(-1), std.reshape(-1)
    )


def _noisy_logits(
    z: NDArray[np.generic],
    std: NDArray[np.float64],
    params: DefenseParams,
    draws: NDArray[np.floating] | None,
    dtype: type[np.floating],
) -> NDArray[np.floating]:
    """(z + sigma e) / T as an (n, M, k) array of ``dtype`` (M = 1 without noise: every
    ensemble member would be softmax(z / T))."""
    logits = np.asarray(z, dtype=dtype)[:, None, :]
    if draws is None:
        return logits / dtype(params.temperature)
    noisy = draws.astype(dtype)
    noisy *= std.astype(dtype)[:, :, None]
    noisy += logits
    noisy /= dtype(params.temperature)
    return noisy


def _softmax_in_place(
    a: NDArray[np.floating], axis: int, top: NDArray[np.floating] | None = None
) -> None:
    """a <- softmax(a) along ``axis``: exp(a - max a) / sum exp(a - max a); ``top`` is
    max a when the caller has it already."""
    a -= a.max(axis=axis, keepdims=True) if top is None else top
    np.exp(a, out=a)
    a /= a.sum(axis=axis, keepdims=True)


def defend_from(
    source: NoiseSource,
    logits: FloatArray,
    params: DefenseParams,
    *,
    inputs: NDArray[np.generic] | None = None,
    secret: bytes | None = None,
    model_id: str = "",
) -> DefenseOutput:
    """``apply_dynanoise(logits, params, source.draws(...))``: the draws the tenant's
    noise mode asks for, then the defense (arguments as `NoiseSource.draws`).

    Fresh draws from a compiled pool go straight into the kernel, in one call that
    builds no array of draws: the same draws and the same answer, and in a loaded
    server about 60 % of the two calls' time (bench/micro-timings.md).
    """
    pool = source.compiled_fresh
    if (
        pool is not None
        and params.noise_mode is _FRESH
        and params.ensemble_size == 1
        and params.sensitivity is _ENTROPY
        and type(logits) is np.ndarray
        and params.output_mode is _DYNANOISE  # params.adds_noise, without a call
        and params.base_variance > 0.0
        and params.temperature >= _MIN_FAST_TEMPERATURE
        and params.base_variance * (1.0 + params.lambda_scale) <= _MAX_FAST_VARIANCE
    ):
        return pool.defend_entropy(
            logits, params.base_variance, params.lambda_scale, params.temperature, DefenseOutput
        )
    z = np.asarray(logits)
    draws = source.draws(
        params, z.shape[0], z.shape[1], inputs=inputs, secret=secret, model_id=model_id, logits=z
    )
    return apply_dynanoise(z, params, draws)


def defend(
    logits: FloatArray,
    params: DefenseParams,
    *,
    rng: np.random.Generator | None = None,
    secret: bytes | None = None,
    model_id: str = "",
    inputs: NDArray[np.generic] | None = None,
) -> DefenseOutput:
    """Draw the noise the mode asks for (a `NoiseSource` over ``rng``), then apply
    DynaNoise. Keyed mode needs ``secret``, ``model_id`` and the raw ``inputs`` that
    produced the logits, keyed_logits the ``secret``; fresh mode needs ``rng``."""
    return defend_from(
        NoiseSource(DirectNormals(rng)),
        logits,
        params,
        inputs=inputs,
        secret=secret,
        model_id=model_id,
    )
