"""The request path minus HTTP: validated batch -> clean logits -> DynaNoise -> probabilities.

Clean logits stay inside this module; only defended probabilities are returned. A
tenant in a lossy output mode (calibrated_label, coarse) gets the model's held-out
answer tables instead of DynaNoise: deterministic, no noise drawn.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from .arrays import all_finite, label_flips
from .defense import (
    DefenseParams,
    NoiseSource,
    OutputCalibration,
    StandardNormalPool,
    defend_from,
    sensitivity,
)
from .errors import BadInput, DefenseFailure, OutputModeUnavailable
from .metrics import ServiceMetrics
from .runtime import OnnxClassifier
from .runtime.batching import (
    MIN_FIXED_COST_S,
    REQUEST_BACKLOG,
    AdaptiveBatcher,
    LoopCoalescer,
    LoopGatherer,
    RequestBacklog,
)

# Seeders hold a tenant secret's HMAC state: keep at most this many per process.
_MAX_SEEDERS = 1024


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


def _calibration_for(model: OnnxClassifier, params: DefenseParams) -> OutputCalibration | None:
    """The answer tables of a lossy output mode; None for DynaNoise."""
    if not params.lossy:
        return None
    if model.calibration is None:
        raise OutputModeUnavailable(
            f"model {model.name!r} cannot answer in the {params.output_mode.value} output "
            "mode: its manifest needs a `calibration` block (written by `dynanoise models "
            "calibrate-outputs`)"
        )
    return model.calibration


@dataclass(frozen=True, slots=True)
class LogitsOf:
    """What a prediction's steps wait for: ``model``'s logits of ``batch``."""

    model: OnnxClassifier
    batch: NDArray[np.generic]


T = TypeVar("T")
Steps = Generator[LogitsOf, NDArray[Any], T]
"""A pipeline that yields the logits it needs and is sent them; returns its answer."""


def run_steps(steps: Steps[T], logits: Callable[[LogitsOf], NDArray[Any]]) -> T:
    """Drive ``steps`` to its answer, computing each logits it asks for with ``logits``;
    an exception raised there is thrown into the steps, where it was needed."""
    try:
        need = next(steps)
        while True:
            try:
                value = logits(need)
            except Exception as exc:
                need = steps.throw(exc)
            else:
                need = steps.send(value)
    except StopIteration as done:
        return done.value


async def run_steps_async(
    steps: Steps[T], logits: Callable[[LogitsOf], Awaitable[NDArray[Any]]]
) -> T:
    """`run_steps` with awaited logits: the event loop serves others while they come."""
    try:
        need = next(steps)
        while True:
            try:
                value = await logits(need)
            except Exception as exc:
                need = steps.throw(exc)
            else:
                need = steps.send(value)
    except StopIteration as done:
        return done.value


def _model_key(model: OnnxClassifier) -> tuple[str, int]:
    """A loaded model's key for its batcher and gatherers: the loaded object, not only its
    id, so a model reloaded under the same name@version (the repository API) gets ones
    of its own session."""
    return model.model_id, id(model)


def _forget_gatherer(gatherers: dict[tuple[str, int], LoopGatherer], key: tuple[str, int]) -> None:
    gatherer = gatherers.pop(key, None)
    if gatherer is not None:
        gatherer.close()


_Coalescers = dict[tuple[str, int], LoopCoalescer]


class _ModelRunner:
    """A model's ``logits`` that does not keep the model alive, so a model unloaded from
    the registry is freed, and its batcher with it (see ``Predictor.batcher``). A call
    comes from a request that holds the model, so the model is there while it runs."""

    __slots__ = ("_model",)

    def __init__(self, model: OnnxClassifier) -> None:
        self._model = weakref.ref(model)

    def __call__(self, batch: NDArray[Any]) -> NDArray[Any]:
        model = self._model()
        assert model is not None, "a batcher ran after its model was freed"
        return model.logits(batch)


class Predictor:
    """Runs one batch through a model and the tenant's defense, recording metrics.

    With ``batching_max_delay_ms`` > 0, concurrent calls for the same model share
    one ONNX run when the model's measured cost says merging pays (see
    ``AdaptiveBatcher``); the defense still runs per request, with that request's
    tenant parameters, on exactly the rows it sent.
    """

    def __init__(
        self,
        metrics: ServiceMetrics,
        rng: np.random.Generator | None = None,
        *,
        batching_max_delay_ms: float = 0.0,
        batching_max_batch: int = 256,
        batching_min_fixed_cost_s: float = MIN_FIXED_COST_S,
        backlog: RequestBacklog = REQUEST_BACKLOG,
    ) -> None:
        self._metrics = metrics
        # One generator per process: reseeding per call costs more than the defense. Its draws are
        # thread-safe (each value is served once) and never leave unmixed with logits.
        self._noise = NoiseSource(
            StandardNormalPool(rng if rng is not None else fresh_generator()),
            max_seeders=_MAX_SEEDERS,
        )
        self._batching_delay_s = batching_max_delay_ms / 1000.0
        self._batching_max_batch = batching_max_batch
        self._batching_min_fixed_cost_s = batching_min_fixed_cost_s
        self._batchers: dict[tuple[str, int], AdaptiveBatcher] = {}
        # Per event loop: a gatherer's futures belong to the loop its requests run on.
        self._gatherers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, int], LoopGatherer]
        ] = weakref.WeakKeyDictionary()
        self._coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Coalescers] = (
            weakref.WeakKeyDictionary()
        )
        self._backlog = backlog
        self._lock = threading.Lock()

    def predict(
        self, model: OnnxClassifier, context: DefenseContext, batch: NDArray[np.generic]
    ) -> NDArray[np.float32]:
        """Defended probabilities (n, k) for a batch already validated by ``model``.
        Raises OutputModeUnavailable, before running the model, when the tenant's
        output mode needs a calibration the model's manifest does not carry."""
        return run_steps(self.prediction(model, context, batch), self.logits)

    def prediction(
        self, model: OnnxClassifier, context: DefenseContext, batch: NDArray[np.generic]
    ) -> Steps[NDArray[np.float32]]:
        """`predict` as steps: yields the `LogitsOf` it needs and is sent them (by
        `run_steps`, or `run_steps_async` on the event loop), so one pipeline serves a
        thread that blocks on the model and a request that awaits a gathered call."""
        params = context.params
        calibration = _calibration_for(model, params)
        started = time.perf_counter()
        logits = yield LogitsOf(model, batch)
        # A model can overflow on extreme (finite) inputs; never pass Inf/NaN on. Part
        # of the model's time: it checks the model's output, not the defense's.
        if not all_finite(logits):
            raise BadInput("the model produced non-finite values for this input")
        inferred = time.perf_counter()
        if calibration is None:
            out = defend_from(
                self._noise,
                logits,
                params,
                inputs=batch,
                secret=context.noise_secret,
                model_id=model.model_id,
            )
            probabilities, risk, noise_std = out.probabilities, out.sensitivity, out.noise_std
        else:
            probabilities = calibration.answer(logits, min(params.buckets, calibration.max_buckets))
            # R of the clean output, as DynaNoise would have measured it; no noise.
            risk = sensitivity(logits, params.sensitivity)
            noise_std = np.zeros(len(risk))
        defended = time.perf_counter()
        if not all_finite(probabilities):
            # The defense is overflow-proof; this guards the invariant, never a NaN answer.
            raise DefenseFailure("the defense produced non-finite probabilities")

        # Zero in the lossy modes by construction (the tables keep the model's label).
        flips = label_flips(probabilities, logits)
        self._metrics.observe_prediction(
            model.name,
            context.tenant,
            inferred - started,
            defended - inferred,
            risk,
            noise_std,
            flips,
        )
        return probabilities

    def logits(self, need: LogitsOf) -> NDArray[Any]:
        """The model's logits for ``need``, blocking: merged with other threads' calls
        by the model's batcher when it gathers."""
        batcher = self.batcher(need.model)
        return need.model.logits(need.batch) if batcher is None else batcher.run(need.batch)

    async def logits_gathered(self, need: LogitsOf) -> NDArray[Any]:
        """The model's logits for ``need``, awaited on the event loop: merged with other
        requests of this loop into calls on the model's own threads (`LoopGatherer`)."""
        return await self.gatherer(need.model).run(need.batch)

    def may_coalesce(self) -> bool:
        """Whether a request reaching its model now might share the call (batching on,
        and other requests held for this turn of the loop: `RequestBacklog`). Cheap: the
        data plane asks it of every request to choose its path."""
        return self._batching_delay_s > 0 and self._backlog.busy

    async def logits_maybe_coalesced(self, need: LogitsOf) -> NDArray[Any]:
        """The model's logits for ``need``, awaited on the event loop: from a call shared
        with the other requests of this turn of the loop when `coalesces` (`LoopCoalescer`),
        else from the model at once (`logits`)."""
        coalescer = self._joinable(need.model, need.batch.shape[0])
        if coalescer is not None:
            return await coalescer.run(need.batch)
        return self.logits(need)

    def coalesces(self, model: OnnxClassifier, rows: int) -> bool:
        """Whether a request of ``rows`` rows for ``model``, on the running loop, should
        await a call shared with others rather than run the model at once: batching is
        on, the model is not gathered on threads, and other requests of this turn of the
        loop can share its call (`LoopCoalescer.joins`)."""
        return self._joinable(model, rows) is not None

    def _joinable(self, model: OnnxClassifier, rows: int) -> LoopCoalescer | None:
        """The coalescer a request of ``rows`` rows should join (`coalesces`), or None."""
        batcher = self._batchers.get(_model_key(model))
        if batcher is None or batcher.gathering:
            return None
        coalescer = self.coalescer(model)
        return coalescer if coalescer.joins(rows) else None

    def coalescer(self, model: OnnxClassifier) -> LoopCoalescer:
        """The running loop's coalescer for ``model`` (created on first use)."""
        batcher = self.batcher(model)
        assert batcher is not None, "coalescing needs batching on"
        loop = asyncio.get_running_loop()
        coalescers = self._coalescers.get(loop)
        if coalescers is None:
            coalescers = self._coalescers[loop] = {}
        key = _model_key(model)
        coalescer = coalescers.get(key)
        if coalescer is None:
            coalescer = coalescers[key] = LoopCoalescer(
                batcher, max_batch=self._batching_max_batch, backlog=self._backlog
            )
            weakref.finalize(model, coalescers.pop, key, None)
        return coalescer

    def gathers(self, model: OnnxClassifier) -> bool:
        """Whether ``model``'s measured cost makes its calls worth gathering now: its
        requests then await `logits_gathered` instead of running the model inline."""
        batcher = self._batchers.get(_model_key(model))
        return batcher is not None and batcher.gathering

    def gatherer(self, model: OnnxClassifier) -> LoopGatherer:
        """The running loop's gatherer for ``model`` (created on first use; one per loop,
        as a test client runs its own)."""
        batcher = self.batcher(model)
        assert batcher is not None, "gathering needs batching on"
        loop = asyncio.get_running_loop()
        gatherers = self._gatherers.setdefault(loop, {})
        key = _model_key(model)
        gatherer = gatherers.get(key)
        if gatherer is None:
            gatherer = LoopGatherer(
                batcher, max_delay_s=self._batching_delay_s, max_batch=self._batching_max_batch
            )
            gatherers[key] = gatherer
            weakref.finalize(model, _forget_gatherer, gatherers, key)
        return gatherer

    def batcher(self, model: OnnxClassifier) -> AdaptiveBatcher | None:
        """The model's batcher when batching is on (created on first use)."""
        if self._batching_delay_s <= 0:
            return None
        key = _model_key(model)
        batcher = self._batchers.get(key)
        if batcher is None:
            with self._lock:
                batcher = self._batchers.get(key)
                if batcher is None:
                    batcher = AdaptiveBatcher(
                        _ModelRunner(model),
                        max_delay_s=self._batching_delay_s,
                        max_batch=self._batching_max_batch,
                        min_fixed_cost_s=self._batching_min_fixed_cost_s,
                    )
                    self._batchers[key] = batcher
                    weakref.finalize(model, self._batchers.pop, key, None)
        return batcher
