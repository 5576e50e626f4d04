"""`LoopGatherer`: requests answered on the event loop await merged model calls run on
the model's own threads; `Predictor` drives the same prediction steps either way."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.defense import DefenseParams, NoiseMode
from service.errors import BadInput
from service.inference import DefenseContext, Predictor, run_steps_async
from service.metrics import ServiceMetrics
from service.runtime import OnnxClassifier
from service.runtime.batching import AdaptiveBatcher, LoopGatherer

from ..onnx_factory import linear_logits, write_linear_model
from .test_batching import SlowDouble


class GatedDouble(SlowDouble):
    """SlowDouble whose calls wait for ``gate`` and record the threads they ran on."""

    def __init__(self) -> None:
        super().__init__(delay_s=0.0)
        self.gate = threading.Event()
        self.threads: set[str] = set()
        self.entered = 0  # calls begun, gate open or not

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.entered += 1
        assert self.gate.wait(10), "the test never opened the gate"
        return super().__call__(batch)


def _gatherer(runner: SlowDouble, **limits: float) -> tuple[AdaptiveBatcher, LoopGatherer]:
    batcher = AdaptiveBatcher(runner, max_delay_s=1.0, max_batch=64, clock=time.perf_counter)
    settings = {"max_delay_s": 5.0, "max_batch": 64, "max_running": 1, **limits}
    return batcher, LoopGatherer(batcher, **settings)  # type: ignore[arg-type]


def _row(i: int, rows: int = 1) -> np.ndarray:
    batch = np.full((rows, 2), float(i), dtype=np.float32)
    batch[:, 1] = np.arange(rows)
    return batch


async def _let_the_loop_run() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_requests_that_queue_behind_a_running_call_share_the_next_one() -> None:
    runner = GatedDouble()
    batcher, gatherer = _gatherer(runner)

    async def scenario() -> list[np.ndarray]:
        first = asyncio.ensure_future(gatherer.run(_row(0)))  # the model is idle: goes at once
        await _let_the_loop_run()
        rest = [asyncio.ensure_future(gatherer.run(_row(i, 1 + i % 3))) for i in range(1, 11)]
        await _let_the_loop_run()
        runner.gate.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, 2.0 * _row(i, 1 if i == 0 else 1 + i % 3))
    # One call for the first request, one merged call for the ten that queued behind it.
    assert runner.sizes == [1, sum(1 + i % 3 for i in range(1, 11))]
    assert batcher.merged_runs == 1
    assert runner.threads and all(name.startswith("dynanoise-model") for name in runner.threads)
    gatherer.close()


def test_a_merged_call_holds_at_most_max_batch_rows() -> None:
    runner = GatedDouble()
    _, gatherer = _gatherer(runner, max_batch=4)

    async def scenario() -> list[np.ndarray]:
        calls = [asyncio.ensure_future(gatherer.run(_row(i))) for i in range(10)]
        await _let_the_loop_run()
        runner.gate.set()
        return await asyncio.gather(*calls)

    results = asyncio.run(scenario())
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, 2.0 * _row(i))
    assert max(runner.sizes) <= 4 and sum(runner.sizes) == 10
    gatherer.close()


def test_a_failing_request_gets_its_own_error_and_the_others_their_rows() -> None:
    runner = GatedDouble()
    _, gatherer = _gatherer(runner)

    async def one(i: int) -> object:
        batch = _row(i)
        if i % 4 == 0:
            batch[0, 0] = -1.0  # SlowDouble refuses a negative first feature
        try:
            return await gatherer.run(batch)
        except ValueError as exc:
            return exc

    async def scenario() -> list[object]:
        calls = [asyncio.ensure_future(one(i)) for i in range(12)]
        await _let_the_loop_run()
        runner.gate.set()
        return await asyncio.gather(*calls)

    for i, result in enumerate(asyncio.run(scenario())):
        if i % 4 == 0:
            assert isinstance(result, ValueError)
        else:
            assert isinstance(result, np.ndarray)
            np.testing.assert_array_equal(result, 2.0 * _row(i))
    gatherer.close()


def test_a_request_waits_at_most_max_delay_for_a_busy_model_when_a_second_call_may_run() -> None:
    runner = GatedDouble()
    _, gatherer = _gatherer(runner, max_delay_s=0.02, max_running=2)

    async def scenario() -> float:
        stuck = asyncio.ensure_future(gatherer.run(_row(0)))  # holds the first model thread
        await _let_the_loop_run()
        started = time.perf_counter()
        second = asyncio.ensure_future(gatherer.run(_row(1)))
        while runner.entered < 2:  # the second call starts beside the stuck one
            await asyncio.sleep(0.005)
            assert time.perf_counter() - started < 5, "the second call never started"
        waited = time.perf_counter() - started
        runner.gate.set()
        await asyncio.gather(stuck, second)
        return waited

    waited = asyncio.run(scenario())
    assert 0.015 <= waited < 5
    gatherer.close()


def test_a_cancelled_request_leaves_the_others_answered() -> None:
    runner = GatedDouble()
    _, gatherer = _gatherer(runner)

    async def scenario() -> list[np.ndarray]:
        calls = [asyncio.ensure_future(gatherer.run(_row(i))) for i in range(6)]
        await _let_the_loop_run()
        calls[3].cancel()  # its client went away while it waited
        runner.gate.set()
        return await asyncio.gather(*(c for i, c in enumerate(calls) if i != 3))

    results = asyncio.run(scenario())
    for i, result in zip([0, 1, 2, 4, 5], results, strict=True):
        np.testing.assert_array_equal(result, 2.0 * _row(i))
    gatherer.close()


def test_invalid_limits_are_refused() -> None:
    batcher = AdaptiveBatcher(SlowDouble(), max_delay_s=0.0, max_batch=1)
    for limits in ({"max_delay_s": -1.0}, {"max_batch": 0}, {"max_running": 0}):
        with pytest.raises(ValueError):
            LoopGatherer(batcher, **{"max_delay_s": 0.0, "max_batch": 1, **limits})  # type: ignore[arg-type]


def test_gathered_predictions_equal_blocking_ones(
    linear_model: tuple[OnnxClassifier, Path],
) -> None:
    model, _ = linear_model
    secret = b"k" * 32
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(1 + i % 3, 8)).astype(np.float32) for i in range(60)]
    keyed = DefenseContext(
        "a", DefenseParams(noise_mode=NoiseMode.KEYED, base_variance=0.3), secret
    )
    clean = DefenseContext("b", DefenseParams(base_variance=0.0, temperature=1.0), secret)
    gathered = Predictor(ServiceMetrics(), batching_max_delay_ms=20.0, batching_max_batch=32)

    async def scenario() -> list[np.ndarray]:
        async def one(i: int) -> np.ndarray:
            context = keyed if i % 2 else clean
            steps = gathered.prediction(model, context, inputs[i])
            return await run_steps_async(steps, gathered.logits_gathered)

        return await asyncio.gather(*(one(i) for i in range(len(inputs))))

    results = asyncio.run(scenario())
    batcher = gathered.batcher(model)
    assert batcher is not None and batcher.runs < len(inputs)  # some calls were merged
    assert_answered_as_alone(results, inputs, linear_model, keyed)


def assert_answered_as_alone(
    results: list[np.ndarray],
    inputs: list[np.ndarray],
    linear_model: tuple[OnnxClassifier, Path],
    keyed: DefenseContext,
) -> None:
    """Odd requests (``keyed``): the answer a predictor gives them alone, bit for bit;
    even ones (no noise, T = 1): the clean softmax of exactly their own rows."""
    model, model_dir = linear_model
    alone = Predictor(ServiceMetrics())
    for i, probabilities in enumerate(results):
        if i % 2:  # keyed noise: the same answer however the rows were batched
            np.testing.assert_array_equal(probabilities, alone.predict(model, keyed, inputs[i]))
        else:
            logits = linear_logits(model_dir, inputs[i])
            expected = np.exp(logits - logits.max(axis=1, keepdims=True))
            expected /= expected.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)


def test_a_gathered_request_gets_its_own_model_error(tmp_path: Path) -> None:
    model_dir = write_linear_model(tmp_path, name="big", n_features=2, n_classes=3, scale=1e30)
    model = OnnxClassifier.load(model_dir)
    predictor = Predictor(ServiceMetrics(), batching_max_delay_ms=20.0, batching_max_batch=64)
    context = DefenseContext("t", DefenseParams(), b"s" * 32)

    async def one(i: int) -> object:
        x = np.array([[1e10 if i % 4 == 0 else 0.0, 0.0]], dtype=np.float32)
        try:
            steps = predictor.prediction(model, context, x)
            return await run_steps_async(steps, predictor.logits_gathered)
        except BadInput as exc:
            return exc

    async def scenario() -> list[object]:
        return await asyncio.gather(*(one(i) for i in range(40)))

    for i, result in enumerate(asyncio.run(scenario())):
        assert isinstance(result, BadInput) == (i % 4 == 0)
