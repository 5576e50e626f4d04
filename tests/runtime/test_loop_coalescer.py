"""`LoopCoalescer`: requests that reach a cheap model in the same turn of the event loop
share one call, run on the loop; a request alone runs at once. `RequestBacklog` says
who else is in the turn (the HTTP protocol counts it: tests/api/test_request_backlog.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from service.defense import DefenseParams, NoiseMode
from service.errors import BadInput
from service.inference import DefenseContext, Predictor, run_steps_async
from service.metrics import ServiceMetrics
from service.runtime import OnnxClassifier
from service.runtime.batching import AdaptiveBatcher, LoopCoalescer, RequestBacklog

from ..onnx_factory import write_linear_model
from .test_batching import SlowDouble
from .test_loop_gatherer import assert_answered_as_alone


def _coalescer(
    max_batch: int = 64,
) -> tuple[SlowDouble, AdaptiveBatcher, LoopCoalescer, RequestBacklog]:
    runner = SlowDouble(delay_s=0.0)
    batcher = AdaptiveBatcher(runner, max_delay_s=0.001, max_batch=64, clock=time.perf_counter)
    backlog = RequestBacklog()
    return runner, batcher, LoopCoalescer(batcher, max_batch=max_batch, backlog=backlog), backlog


def _rows(i: int, rows: int = 1) -> np.ndarray:
    batch = np.full((rows, 2), float(i), dtype=np.float32)
    batch[:, 1] = np.arange(rows)
    return batch


async def _one_turn(
    coalescer: LoopCoalescer, backlog: RequestBacklog, batches: list[np.ndarray]
) -> list[object]:
    """What the HTTP protocol does for requests that arrive together: their tasks are
    counted as created in one turn, each counts itself started when it first runs and
    goes straight to its model step (a one-row request answered inline)."""

    async def request(batch: np.ndarray) -> object:
        backlog.started += 1
        try:
            if coalescer.joins(batch.shape[0]):
                return await coalescer.run(batch)
            return ("alone", batch * 2.0)
        except ValueError as exc:
            return exc

    backlog.created += len(batches)
    return await asyncio.gather(*(request(batch) for batch in batches))


def test_requests_of_one_turn_share_one_model_call() -> None:
    runner, batcher, coalescer, backlog = _coalescer()
    batches = [_rows(i, 1 + i % 3) for i in range(6)]
    results = asyncio.run(_one_turn(coalescer, backlog, batches))
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_array_equal(result, batch * 2.0)  # its own rows, none alone
    assert runner.sizes == [sum(b.shape[0] for b in batches)]
    assert batcher.merged_runs == 1
    assert backlog.waiting == 0 and backlog.grouped == 0 and not backlog.busy


def test_a_request_alone_runs_at_once() -> None:
    runner, _, coalescer, backlog = _coalescer()
    results = asyncio.run(_one_turn(coalescer, backlog, [_rows(7)]))
    # Nobody else in its turn: no group, no await, the model is not even asked here.
    assert results[0][0] == "alone"  # type: ignore[index]
    assert runner.sizes == []
    assert not coalescer.joins(1)


def test_a_group_holds_at_most_max_batch_rows() -> None:
    runner, _, coalescer, backlog = _coalescer(max_batch=4)
    batches = [_rows(i, 2) for i in range(3)] + [_rows(9, 4)]
    results = asyncio.run(_one_turn(coalescer, backlog, batches))
    # 2 + 2 fill a group; the third opens the next; a batch of max_batch rows runs alone.
    assert runner.sizes == [4, 2]
    assert results[3][0] == "alone"  # type: ignore[index]
    for batch, result in zip(batches[:3], results[:3], strict=True):
        np.testing.assert_array_equal(result, batch * 2.0)
    assert backlog.grouped == 0


def test_a_failing_request_gets_its_own_error_and_the_others_their_rows() -> None:
    runner, _, coalescer, backlog = _coalescer()
    batches = [_rows(1), _rows(-1), _rows(2)]  # SlowDouble refuses a negative feature
    results = asyncio.run(_one_turn(coalescer, backlog, batches))
    assert isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[0], batches[0] * 2.0)
    np.testing.assert_array_equal(results[2], batches[2] * 2.0)
    assert runner.sizes == [3, 1, 1, 1]  # the merged call failed: each re-run alone


def test_a_cancelled_request_leaves_the_others_answered() -> None:
    _, _, coalescer, backlog = _coalescer()

    async def scenario() -> tuple[bool, np.ndarray]:
        backlog.created += 2
        backlog.started += 2
        lost = asyncio.ensure_future(coalescer.run(_rows(1)))
        kept = asyncio.ensure_future(coalescer.run(_rows(2)))
        await asyncio.sleep(0)  # both joined the group
        lost.cancel()
        answer = await kept
        await asyncio.gather(lost, return_exceptions=True)
        return lost.cancelled(), answer

    cancelled, kept = asyncio.run(scenario())
    assert cancelled
    np.testing.assert_array_equal(kept, _rows(2) * 2.0)
    assert backlog.grouped == 0


def test_invalid_limits_are_refused() -> None:
    batcher = AdaptiveBatcher(SlowDouble(), max_delay_s=0.0, max_batch=1)
    with pytest.raises(ValueError, match="max_batch"):
        LoopCoalescer(batcher, max_batch=0, backlog=RequestBacklog())


def test_coalesced_predictions_equal_the_ones_made_alone(
    linear_model: tuple[OnnxClassifier, Path],
) -> None:
    model, _ = linear_model
    secret = b"k" * 32
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(1 + i % 3, 8)).astype(np.float32) for i in range(40)]
    keyed = DefenseContext(
        "a", DefenseParams(noise_mode=NoiseMode.KEYED, base_variance=0.3), secret
    )
    clean = DefenseContext("b", DefenseParams(base_variance=0.0, temperature=1.0), secret)
    backlog = RequestBacklog()
    coalescing = Predictor(
        ServiceMetrics(), batching_max_delay_ms=2.0, batching_max_batch=256, backlog=backlog
    )
    coalescing.predict(model, clean, inputs[0])  # its batcher measures the model: cheap

    async def scenario() -> list[np.ndarray]:
        async def one(i: int) -> np.ndarray:
            backlog.started += 1
            assert coalescing.may_coalesce()
            context = keyed if i % 2 else clean
            steps = coalescing.prediction(model, context, inputs[i])
            return await run_steps_async(steps, coalescing.logits_maybe_coalesced)

        backlog.created += len(inputs)
        return await asyncio.gather(*(one(i) for i in range(len(inputs))))

    results = asyncio.run(scenario())
    batcher = coalescing.batcher(model)
    assert batcher is not None and not batcher.gathering
    assert batcher.runs == 2 and batcher.merged_runs == 1  # the warm call, then one for all
    assert not coalescing.may_coalesce()  # the turn is over
    assert_answered_as_alone(results, inputs, linear_model, keyed)


def test_a_coalesced_request_gets_its_own_model_error(tmp_path: Path) -> None:
    model_dir = write_linear_model(tmp_path, name="big", n_features=2, n_classes=3, scale=1e30)
    model = OnnxClassifier.load(model_dir)
    backlog = RequestBacklog()
    predictor = Predictor(
        ServiceMetrics(), batching_max_delay_ms=2.0, batching_max_batch=64, backlog=backlog
    )
    context = DefenseContext("t", DefenseParams(), b"s" * 32)
    predictor.predict(model, context, np.zeros((1, 2), dtype=np.float32))

    async def one(i: int) -> object:
        backlog.started += 1
        x = np.array([[1e10 if i % 4 == 0 else 0.0, 0.0]], dtype=np.float32)
        try:
            steps = predictor.prediction(model, context, x)
            return await run_steps_async(steps, predictor.logits_maybe_coalesced)
        except BadInput as exc:
            return exc

    async def scenario() -> list[object]:
        backlog.created += 20
        return await asyncio.gather(*(one(i) for i in range(20)))

    for i, result in enumerate(asyncio.run(scenario())):
        assert isinstance(result, BadInput) == (i % 4 == 0)
    batcher = predictor.batcher(model)
    assert batcher is not None and batcher.merged_runs == 1


def test_without_batching_nothing_coalesces(linear_model: tuple[OnnxClassifier, Path]) -> None:
    model, _ = linear_model
    backlog = RequestBacklog()
    backlog.created = 5  # requests are waiting, but batching is off
    predictor = Predictor(ServiceMetrics(), backlog=backlog)
    assert not predictor.may_coalesce()
    assert not predictor.coalesces(model, 1)
