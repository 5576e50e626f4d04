"""Adaptive micro-batching: every caller gets exactly its own rows back, keyed noise
answers do not depend on batching, and one failing request never poisons others."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.defense import DefenseParams, NoiseMode
from service.errors import BadInput
from service.inference import DefenseContext, Predictor
from service.metrics import ServiceMetrics
from service.runtime import OnnxClassifier
from service.runtime.batching import WARM_UP_CALLS, AdaptiveBatcher

from ..live import live_server
from ..onnx_factory import linear_logits, write_linear_model


class SlowDouble:
    """A runner that doubles its input, slowly enough for callers to pile up, and
    fails on any batch holding a negative first feature. It sleeps, so its cost shows
    on a wall clock (``_batcher``), not in CPU time."""

    def __init__(self, delay_s: float = 0.005) -> None:
        self.delay_s = delay_s
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.sizes.append(batch.shape[0])
        time.sleep(self.delay_s)
        if (batch[:, 0] < 0).any():
            raise ValueError("negative input")
        return batch * 2.0


def _batcher(runner: SlowDouble, *, max_delay_s: float, max_batch: int) -> AdaptiveBatcher:
    return AdaptiveBatcher(
        runner, max_delay_s=max_delay_s, max_batch=max_batch, clock=time.perf_counter
    )


def _hammer(call: Callable[[int], object], n_calls: int, workers: int = 16) -> list[object]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(call, range(n_calls)))


def test_each_caller_gets_its_own_rows_under_concurrency() -> None:
    runner = SlowDouble()
    batcher = _batcher(runner, max_delay_s=0.01, max_batch=64)

    def call(i: int) -> tuple[int, np.ndarray]:
        rows = 1 + i % 4
        batch = np.full((rows, 3), float(i), dtype=np.float32)
        batch[:, 1] = np.arange(rows)
        return i, batcher.run(batch)

    for i, result in _hammer(call, 200):  # type: ignore[misc]
        rows = 1 + i % 4
        expected = np.full((rows, 3), 2.0 * i, dtype=np.float32)
        expected[:, 1] = 2.0 * np.arange(rows)
        np.testing.assert_array_equal(result, expected)
    assert batcher.merged_runs > 0, "no call was merged: the test did not exercise batching"
    assert max(runner.sizes) > 4
    assert max(runner.sizes) <= 64


def test_a_failing_request_does_not_poison_the_others() -> None:
    batcher = _batcher(SlowDouble(), max_delay_s=0.01, max_batch=64)

    def call(i: int) -> object:
        batch = np.array([[-1.0 if i % 5 == 0 else float(i), 0.0]])
        try:
            return batcher.run(batch)
        except ValueError as exc:
            return exc

    results = _hammer(call, 100)
    for i, result in enumerate(results):
        if i % 5 == 0:
            assert isinstance(result, ValueError)
        else:
            assert isinstance(result, np.ndarray)
            np.testing.assert_array_equal(result, [[2.0 * i, 0.0]])
    assert batcher.merged_runs > 0


def test_an_idle_model_runs_at_once_and_big_batches_go_alone() -> None:
    runner = SlowDouble(delay_s=0.001)
    batcher = _batcher(runner, max_delay_s=5.0, max_batch=8)
    for _ in range(WARM_UP_CALLS):  # run alone and timed
        np.testing.assert_array_equal(batcher.run(np.ones((1, 2))), 2 * np.ones((1, 2)))
    assert batcher.gathering  # 1 ms a call, all of it fixed: worth gathering
    started = time.monotonic()
    np.testing.assert_array_equal(batcher.run(np.ones((1, 2))), 2 * np.ones((1, 2)))
    assert time.monotonic() - started < 1.0  # did not wait out the 5 s delay
    np.testing.assert_array_equal(batcher.run(np.ones((20, 2))), 2 * np.ones((20, 2)))
    assert runner.sizes == [1] * (WARM_UP_CALLS + 1) + [20]


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveBatcher(SlowDouble(), max_delay_s=-1.0, max_batch=8)
    with pytest.raises(ValueError):
        AdaptiveBatcher(SlowDouble(), max_delay_s=0.01, max_batch=0)


@pytest.fixture
def linear_model(tmp_path: Path) -> tuple[OnnxClassifier, Path]:
    model_dir = write_linear_model(tmp_path, name="lin", n_features=8, n_classes=5, seed=3)
    return OnnxClassifier.load(model_dir), model_dir


@pytest.mark.parametrize("mode", list(NoiseMode))
def test_predictor_batched_answers_match_unbatched(
    linear_model: tuple[OnnxClassifier, Path], mode: NoiseMode
) -> None:
    model, model_dir = linear_model
    secret = b"k" * 32
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(1 + i % 3, 8)).astype(np.float32) for i in range(120)]
    # Keyed: the paper's noise. Fresh: noise too small to hide whose rows came back.
    noisy = DefenseParams(noise_mode=mode, base_variance=0.3 if mode is NoiseMode.KEYED else 1e-8)
    tenants = [
        DefenseContext("a", noisy, secret),
        DefenseContext(
            "b", DefenseParams(noise_mode=mode, base_variance=0.0, temperature=1.0), secret
        ),
    ]
    plain = Predictor(ServiceMetrics())
    # A bar of zero: the linear model's microseconds a call are worth gathering.
    batched = Predictor(
        ServiceMetrics(),
        batching_max_delay_ms=20.0,
        batching_max_batch=32,
        batching_min_fixed_cost_s=0.0,
    )
    # Slow the model down a little so concurrent calls pile up behind a running batch.
    batcher = batched.batcher(model)
    assert batcher is not None
    run = batcher._runner
    batcher._runner = lambda x: (time.sleep(0.002), run(x))[1]

    def call(i: int) -> np.ndarray:
        return batched.predict(model, tenants[i % 2], inputs[i])

    results = _hammer(call, len(inputs))
    assert batcher.merged_runs > 0
    for i, probabilities in enumerate(results):
        clean = linear_logits(model_dir, inputs[i])
        assert probabilities.shape == clean.shape
        if i % 2 == 1:  # no noise, T = 1: the clean softmax of exactly this request's rows
            expected = np.exp(clean - clean.max(axis=1, keepdims=True))
            expected /= expected.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)
        elif mode is NoiseMode.KEYED:  # the same noise whether batched or not
            np.testing.assert_array_equal(
                probabilities, plain.predict(model, tenants[0], inputs[i])
            )
        else:  # fresh noise: softmax(z / T) of this request's rows, give or take the noise
            expected = np.exp((clean - clean.max(axis=1, keepdims=True)) / 10.0)
            expected /= expected.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def test_predictor_reports_non_finite_logits_for_the_guilty_request_only(tmp_path: Path) -> None:
    model_dir = write_linear_model(tmp_path, name="big", n_features=2, n_classes=3, scale=1e30)
    model = OnnxClassifier.load(model_dir)
    predictor = Predictor(
        ServiceMetrics(),
        batching_max_delay_ms=20.0,
        batching_max_batch=64,
        batching_min_fixed_cost_s=0.0,
    )
    context = DefenseContext("t", DefenseParams(), b"s" * 32)

    def call(i: int) -> object:
        x = np.array([[1e10 if i % 4 == 0 else 0.0, 0.0]], dtype=np.float32)
        try:
            return predictor.predict(model, context, x)
        except BadInput as exc:
            return exc

    for i, result in enumerate(_hammer(call, 60)):
        assert isinstance(result, BadInput) == (i % 4 == 0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "tenant_cache_seconds",
    ["0", "60"],
    ids=["thread-pool", "inline-coalesced"],  # 60: requests run on the loop and coalesce
)
def test_the_served_app_batches_when_the_setting_is_on(
    tmp_path: Path, tenant_cache_seconds: str
) -> None:
    model_dir = write_linear_model(tmp_path / "models", name="lin", n_features=4, n_classes=3)
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(64, 4)).astype(np.float32)
    clean = linear_logits(model_dir, rows)
    with live_server(
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path / 't.db'}",
        extra_env={
            "DYNANOISE_BATCHING_MAX_DELAY_MS": "5",
            "DYNANOISE_ALLOW_CLEAN_OUTPUTS": "true",
            "DYNANOISE_TENANT_CACHE_SECONDS": tenant_cache_seconds,
        },
    ) as url:
        keys = {}
        for name, params in (
            ("keyed", {"noise_mode": "keyed", "base_variance": 0.5, "temperature": 2.0}),
            ("plain", {"base_variance": 0.0, "temperature": 1.0}),
        ):
            created = httpx.post(
                f"{url}/admin/tenants",
                json={"name": name, **params},
                headers={"Authorization": "Bearer live-admin-token-of-32-characters-or-more"},
            )
            assert created.status_code == 201, created.text
            keys[name] = {"Authorization": f"Bearer {created.json()['api_key']}"}

        def call(i: int) -> list[float]:
            response = httpx.post(
                f"{url}/v1/models/lin/predict",
                json={"instances": [rows[i // 2].tolist()]},
                headers=keys["keyed" if i % 2 else "plain"],
                timeout=30,
            )
            assert response.status_code == 200, response.text
            probabilities: list[float] = response.json()["predictions"][0]["probabilities"]
            return probabilities

        concurrent = _hammer(call, 2 * len(rows), workers=16)
        sequential = [call(i) for i in range(1, 2 * len(rows), 2)]
    # No noise, T = 1: the clean softmax of exactly the row this request sent.
    expected = np.exp(clean - clean.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(concurrent[0::2], expected, rtol=1e-5, atol=1e-7)
    # Keyed noise: the same answer for the same row, whatever it was batched with.
    assert concurrent[1::2] == sequential
