"""The request path minus HTTP: validated batch -> clean logits -> DynaNoise -> probabilities.

Clean logits stay inside this module; only defended probabilities are returned.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .defense import DefenseParams, NoiseMode, apply_dynanoise, draw_noise, keyed_seeds
from .errors import BadInput
from .metrics import ServiceMetrics
from .runtime import OnnxClassifier


@dataclass(frozen=True, slots=True)
class DefenseContext:
    """Who is asking, as far as the defense cares: a metrics label, the tenant's
    parameters and its keyed-noise secret."""

    tenant: str
    params: DefenseParams
    noise_secret: bytes


def fresh_generator() -> np.random.Generator:
    """A generator seeded from OS entropy, so fresh noise never repeats across
    workers or restarts (a fork-inherited or clock-derived seed could)."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(16), "little")))


class Predictor:
    """Runs one batch through a model and the tenant's defense, recording metrics."""

    def __init__(self, metrics: ServiceMetrics, rng: np.random.Generator | None = None) -> None:
        self._metrics = metrics
        # One generator per process: reseeding per call costs ~25 us. Its draws are
        # thread-safe (numpy locks the bit generator) and never leave unmixed with logits.
        self._rng = rng if rng is not None else fresh_generator()

    def predict(
        self, model: OnnxClassifier, context: DefenseContext, batch: NDArray[np.generic]
    ) -> NDArray[np.float32]:
        """Defended probabilities (n, k) for a batch already validated by ``model``."""
        started = time.perf_counter()
        logits = model.logits(batch)
        inferred = time.perf_counter()
        if not np.isfinite(logits).all():
            # A model can overflow on extreme (finite) inputs; never pass Inf/NaN on.
            raise BadInput("the model produced non-finite values for this input")
        params = context.params
        seeds = None
        if params.adds_noise and params.noise_mode is NoiseMode.KEYED:
            seeds = keyed_seeds(context.noise_secret, model.model_id, batch)
        draws = draw_noise(params, logits.shape[0], logits.shape[1], rng=self._rng, seeds=seeds)
        out = apply_dynanoise(logits, params, draws)
        defended = time.perf_counter()

        flips = int(np.count_nonzero(out.probabilities.argmax(axis=1) != logits.argmax(axis=1)))
        m = self._metrics
        m.inference_duration.labels(model.name).observe(inferred - started)
        m.defense_duration.labels(model.name, context.tenant).observe(defended - inferred)
        m.observe_defense(model.name, context.tenant, out.sensitivity, out.noise_std, flips)
        return out.probabilities
