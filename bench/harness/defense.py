"""Micro-benchmark of the defense as the service runs it, beside the model's own cost.

Per sample, for batch sizes and class counts: fresh noise (the paper, the default),
keyed noise (HMAC of each input row + counter-based normals), the keyed noise
alone, a straightforward numpy implementation drawing its noise from a numpy
Generator per call (one array pass per formula step: what the optimised code
replaced), the ONNX model's inference for the same batch, and SHA-256 over each
input row (the floor of the keyed noise's HMAC).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.defense import DefenseParams, NoiseMode, apply_dynanoise, defend_from
from service.defense.noise import (
    KeyedSeeder,
    NoiseSource,
    StandardNormalPool,
    canonical_rows,
    keyed_standard_normal,
)
from service.runtime import OnnxClassifier

from .stats import spread

PAPER_MS_PER_SAMPLE = 0.1432  # Forough & Haddadi, SST-2 latency (hardware not stated)
VARIANTS = ("fresh", "keyed", "keyed_noise_only", "naive_numpy", "inference", "sha256_floor")


def reference_defense(
    logits: NDArray[np.floating], params: DefenseParams, draws: NDArray[np.float64]
) -> NDArray[np.float32]:
    """DynaNoise written the obvious way (entropy sensitivity, float64 throughout)."""
    z = logits.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    entropy = -(np.exp(log_p) * log_p).sum(axis=1)
    risk = np.clip(1.0 - entropy / np.log(z.shape[1]), 0.0, 1.0)
    std = np.sqrt(params.base_variance * (1.0 + params.lambda_scale * risk))
    noisy = (z[:, None, :] + std[:, None, None] * draws) / params.temperature
    e = np.exp(noisy - noisy.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).mean(axis=1).astype(np.float32)


def _fresh(logits: NDArray[Any], params: DefenseParams, source: NoiseSource) -> Any:
    """The service's fresh-noise defense: `defend_from` (one compiled call where the
    kernel is built)."""
    return defend_from(source, logits, params)


def _keyed_noise(seeder: KeyedSeeder, inputs: NDArray[Any], k: int) -> NDArray[np.float64]:
    return keyed_standard_normal(seeder.seeds(inputs), 1, k)


def _keyed(
    logits: NDArray[Any], params: DefenseParams, seeder: KeyedSeeder, inputs: NDArray[Any]
) -> Any:
    return apply_dynanoise(logits, params, _keyed_noise(seeder, inputs, logits.shape[1]))


def _sha256_floor(rows: list[bytes]) -> list[bytes]:
    """SHA-256 of each row's bytes: the least any HMAC-SHA256 of the rows can cost (an
    HMAC hashes the row once, plus two 64-byte blocks). Keyed noise cannot go below it."""
    return [hashlib.sha256(row).digest() for row in rows]


def _naive(logits: NDArray[Any], params: DefenseParams, rng: np.random.Generator) -> Any:
    n, k = logits.shape
    return reference_defense(logits, params, rng.standard_normal((n, 1, k)))


_PER_BATCH = ("inference", "sha256_floor")


def _time_per_call(fn: Callable[[], Any], target_s: float) -> tuple[float, int]:
    """Seconds per call of ``fn``, timing enough calls to fill about ``target_s``."""
    started = time.perf_counter()
    fn()
    once = max(time.perf_counter() - started, 1e-7)
    number = max(1, min(100_000, int(target_s / once)))
    started = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - started) / number, number


def bench_defense(
    model_dir: Path,
    *,
    batch_sizes: Sequence[int],
    class_counts: Sequence[int],
    repeats: int,
    target_s: float,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows of {batch, classes, variant, us_per_sample, us_per_call} (min/median/max).

    The variants of one (batch, classes) cell are timed in turn within each repeat,
    so they share whatever load the machine had at that moment.
    """
    model = OnnxClassifier.load(model_dir)
    rng = np.random.default_rng(seed)
    source = NoiseSource(StandardNormalPool(np.random.default_rng(seed + 1)))
    naive_rng = np.random.default_rng(seed + 2)
    seeder = KeyedSeeder(rng.bytes(32), model.model_id)
    fresh = DefenseParams()
    keyed = DefenseParams(noise_mode=NoiseMode.KEYED)
    rows: list[dict[str, Any]] = []
    for k in class_counts:
        for n in batch_sizes:
            logits = rng.normal(scale=4.0, size=(n, k)).astype(np.float32)
            inputs = rng.random((n, *model.sample_shape), dtype=np.float32).astype(model.dtype)
            cases: dict[str, Callable[[], Any]] = {
                "fresh": partial(_fresh, logits, fresh, source),
                "keyed": partial(_keyed, logits, keyed, seeder, inputs),
                "keyed_noise_only": partial(_keyed_noise, seeder, inputs, k),
                "naive_numpy": partial(_naive, logits, fresh, naive_rng),
            }
            if k == class_counts[0]:  # these depend on the batch, not on k
                cases["inference"] = partial(model.logits, inputs)
                row_bytes = [row.tobytes() for row in canonical_rows(inputs).reshape(n, -1)]
                cases["sha256_floor"] = partial(_sha256_floor, row_bytes)
            timings: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(repeats):
                for name, fn in cases.items():
                    timings[name].append(_time_per_call(fn, target_s)[0])
            for name, seconds in timings.items():
                rows.append(
                    {
                        "batch": n,
                        "classes": k if name not in _PER_BATCH else model.n_classes,
                        "variant": name,
                        "us_per_call": spread([s * 1e6 for s in seconds]),
                        "us_per_sample": spread([s * 1e6 / n for s in seconds]),
                    }
                )
    return rows


def find(records: Sequence[dict[str, Any]], **where: Any) -> dict[str, Any] | None:
    """The first record whose fields equal ``where``."""
    for record in records:
        if all(record.get(key) == value for key, value in where.items()):
            return record
    return None
