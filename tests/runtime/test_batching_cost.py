"""The batcher decides by measured model cost whether to gather: a model whose calls
have a large fixed cost is merged, a cheap one (or one whose cost grows with its rows)
runs each request at once, alone. Costs are driven through an injected clock, so no
assertion here depends on how fast this machine is."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.defense import DefenseParams
from service.inference import DefenseContext, Predictor
from service.metrics import ServiceMetrics
from service.runtime import OnnxClassifier
from service.runtime.batching import (
    MIN_FIXED_COST_S,
    WARM_UP_CALLS,
    AdaptiveBatcher,
    CallCost,
)

from ..onnx_factory import write_linear_model


class FakeClock:
    """Per-thread time that moves only when a fake model runs in that thread, as the
    batcher's default clock (the thread's CPU time) does."""

    def __init__(self) -> None:
        self._local = threading.local()

    def advance(self, seconds: float) -> None:
        self._local.now = self() + seconds

    def __call__(self) -> float:
        now: float = getattr(self._local, "now", 0.0)
        return now


class CostedDouble:
    """Doubles its input and advances ``clock`` by fixed_s + per_row_s * rows per call;
    ``sleep_s`` of real time lets concurrent callers pile up behind a running call."""

    def __init__(
        self, clock: FakeClock, *, fixed_s: float, per_row_s: float = 0.0, sleep_s: float = 0.0
    ) -> None:
        self.clock = clock
        self.fixed_s = fixed_s
        self.per_row_s = per_row_s
        self.sleep_s = sleep_s
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        with self._lock:
            self.sizes.append(batch.shape[0])
        self.clock.advance(self.fixed_s + self.per_row_s * batch.shape[0])
        return batch * 2.0


def _batcher(runner: CostedDouble, **changes: float) -> AdaptiveBatcher:
    options = {"max_delay_s": 0.02, "max_batch": 32, **changes}
    return AdaptiveBatcher(
        runner,
        max_delay_s=options["max_delay_s"],
        max_batch=int(options["max_batch"]),
        min_fixed_cost_s=options.get("min_fixed_cost_s", MIN_FIXED_COST_S),
        clock=runner.clock,
    )


def _warm_up(batcher: AdaptiveBatcher) -> None:
    """The calls a batcher makes alone, and times, before it decides."""
    for _ in range(WARM_UP_CALLS):
        batcher.run(np.zeros((1, 2)))


def _concurrent_rows(batcher: AdaptiveBatcher, n_calls: int = 120) -> list[np.ndarray]:
    """Every call's answer, for single rows sent from 16 threads at once."""

    def call(i: int) -> np.ndarray:
        out = batcher.run(np.full((1, 2), float(i)))
        np.testing.assert_array_equal(out, np.full((1, 2), 2.0 * i))
        return out

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(call, range(n_calls)))


@pytest.mark.parametrize(
    ("fixed_s", "per_row_s"), [(1e-3, 1e-4), (2e-5, 1e-6), (0.0, 5e-4), (3e-3, 0.0)]
)
def test_call_cost_fits_fixed_and_per_row_cost(fixed_s: float, per_row_s: float) -> None:
    cost = CallCost()
    for rows in [1, 1, 4, 1, 16, 2, 1, 32, 1, 8] * 5:
        cost.observe(rows, fixed_s + per_row_s * rows)
    assert cost.fixed_s == pytest.approx(fixed_s, abs=1e-9)
    assert cost.per_row_s == pytest.approx(per_row_s, abs=1e-9)


def test_call_cost_bounds_the_fixed_cost_by_the_call_time_while_sizes_never_vary() -> None:
    cost = CallCost()
    assert cost.fixed_s == 0.0  # nothing measured yet
    for _ in range(10):
        cost.observe(1, 2e-3)
    assert cost.per_row_s is None
    assert cost.fixed_s == pytest.approx(2e-3)


def test_a_cheap_model_is_never_gathered() -> None:
    runner = CostedDouble(FakeClock(), fixed_s=30e-6, per_row_s=1e-6)
    batcher = _batcher(runner)
    _concurrent_rows(batcher)
    assert not batcher.gathering
    assert batcher.merged_runs == 0
    assert runner.sizes == [1] * 120  # every request ran alone, as it came


def test_a_model_with_a_large_fixed_cost_is_gathered() -> None:
    runner = CostedDouble(FakeClock(), fixed_s=2e-3, per_row_s=50e-6, sleep_s=0.002)
    batcher = _batcher(runner, max_batch=8)
    _warm_up(batcher)  # calls run alone and are timed
    assert batcher.gathering
    _concurrent_rows(batcher)
    assert batcher.gathering
    assert batcher.merged_runs > 0
    assert max(runner.sizes) <= 8  # the max_batch bound holds while gathering
    assert sum(runner.sizes) == 120 + WARM_UP_CALLS  # each row ran once


def test_slow_first_calls_do_not_make_a_cheap_model_gathered() -> None:
    runner = CostedDouble(FakeClock(), fixed_s=5e-3)  # a cold first call
    batcher = _batcher(runner)
    batcher.run(np.zeros((1, 2)))
    runner.fixed_s = 20e-6
    _warm_up(batcher)
    assert batcher.cost.fixed_s == pytest.approx(20e-6)
    assert not batcher.gathering


def test_a_model_whose_cost_grows_with_rows_stops_gathering() -> None:
    # 1.1 ms for one row looks like fixed cost until a bigger call shows the slope.
    runner = CostedDouble(FakeClock(), fixed_s=0.1e-3, per_row_s=1e-3)
    batcher = _batcher(runner)
    _warm_up(batcher)
    assert batcher.gathering
    batcher.run(np.zeros((8, 2)))  # nothing else running: led and run at once
    assert batcher.cost.fixed_s == pytest.approx(0.1e-3)
    assert not batcher.gathering


def test_the_decision_has_hysteresis() -> None:
    runner = CostedDouble(FakeClock(), fixed_s=2e-3)
    batcher = _batcher(runner)
    _warm_up(batcher)
    assert batcher.gathering
    runner.fixed_s = 0.3e-3  # below the threshold, above half of it: keeps gathering
    for _ in range(500):
        batcher.run(np.zeros((1, 2)))
    assert batcher.cost.fixed_s == pytest.approx(0.3e-3, rel=1e-3)
    assert batcher.gathering
    runner.fixed_s = 0.1e-3
    for _ in range(500):
        batcher.run(np.zeros((1, 2)))
    assert not batcher.gathering
    runner.fixed_s = 0.3e-3  # and the same 0.3 ms does not start it again
    for _ in range(500):
        batcher.run(np.zeros((1, 2)))
    assert not batcher.gathering


def test_a_gathering_batcher_runs_an_idle_model_at_once() -> None:
    runner = CostedDouble(FakeClock(), fixed_s=2e-3)
    batcher = _batcher(runner, max_delay_s=5.0)
    _warm_up(batcher)
    assert batcher.gathering
    started = time.monotonic()
    batcher.run(np.ones((1, 2)))
    assert time.monotonic() - started < 1.0  # did not wait out the 5 s delay


def test_a_failing_request_is_isolated_while_gathering() -> None:
    class FailsOnNegative(CostedDouble):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            out = super().__call__(batch)
            if (batch < 0).any():
                raise ValueError("negative input")
            return out

    runner = FailsOnNegative(FakeClock(), fixed_s=2e-3, sleep_s=0.002)
    batcher = _batcher(runner)
    _warm_up(batcher)
    assert batcher.gathering

    def call(i: int) -> object:
        try:
            return batcher.run(np.full((1, 2), -1.0 if i % 5 == 0 else float(i)))
        except ValueError as exc:
            return exc

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(100)))
    for i, result in enumerate(results):
        if i % 5 == 0:
            assert isinstance(result, ValueError)
        else:
            np.testing.assert_array_equal(result, np.full((1, 2), 2.0 * i))
    assert max(runner.sizes) > 1  # requests were merged (a merged run holding a bad row fails)


def test_a_negative_cost_threshold_is_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveBatcher(lambda x: x, max_delay_s=0.01, max_batch=8, min_fixed_cost_s=-1.0)


def test_predictor_keeps_the_inline_path_for_a_model_measured_cheap(tmp_path: Path) -> None:
    model = OnnxClassifier.load(write_linear_model(tmp_path, name="lin", n_features=4, n_classes=3))
    context = DefenseContext("t", DefenseParams(), b"s" * 32)
    row = np.ones((1, 4), dtype=np.float32)
    assert not Predictor(ServiceMetrics()).gathers(model)  # batching off
    cheap = Predictor(ServiceMetrics(), batching_max_delay_ms=2.0)
    for _ in range(2 * WARM_UP_CALLS):
        cheap.predict(model, context, row)
    assert not cheap.gathers(model)  # a linear model costs microseconds a call
    # The same model with the bar at zero is worth gathering: calls may wait again.
    eager = Predictor(ServiceMetrics(), batching_max_delay_ms=2.0, batching_min_fixed_cost_s=0.0)
    for _ in range(WARM_UP_CALLS):
        assert not eager.gathers(model)  # a batcher's warm-up calls never wait: inline is safe
        eager.predict(model, context, row)
    assert eager.gathers(model)


def test_an_unloaded_model_is_freed_with_its_batcher(tmp_path: Path) -> None:
    predictor = Predictor(ServiceMetrics(), batching_max_delay_ms=2.0)
    model = OnnxClassifier.load(write_linear_model(tmp_path, name="lin", n_features=4, n_classes=3))
    context = DefenseContext("t", DefenseParams(), b"s" * 32)
    predictor.predict(model, context, np.ones((1, 4), dtype=np.float32))
    freed = weakref.ref(model)
    assert predictor.batcher(model) is not None
    del model
    gc.collect()
    assert freed() is None  # the batcher did not keep the session alive
    assert predictor._batchers == {}  # and its batcher is gone
