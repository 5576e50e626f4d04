"""The request path's cheaper recording: `observe` files a value in the bucket and sum
prometheus-client's own ``observe`` does, and a (model, tenant) pair's memoised series
are the very children ``labels`` gives; a throttled gauge writes the latest value once
per interval."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.metrics import (
    LATENCY_BUCKETS,
    SENSITIVITY_BUCKETS,
    ServiceMetrics,
    ThrottledGauge,
    count,
    observe,
)


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for m in histogram.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize("buckets", [LATENCY_BUCKETS, SENSITIVITY_BUCKETS])
def test_observe_files_values_as_prometheus_does(buckets: tuple[float, ...]) -> None:
    values = [*buckets, *np.nextafter(buckets, np.inf).tolist(), 0.0, -1.0, math.inf, 1e9]
    values += np.random.default_rng(0).uniform(0, 1.2 * max(buckets), 200).tolist()
    ours = Histogram("h", "h", ["l"], buckets=buckets, registry=CollectorRegistry())
    theirs = Histogram("h", "h", ["l"], buckets=buckets, registry=CollectorRegistry())
    for value in values:
        observe(ours.labels("x"), value)
        theirs.labels("x").observe(value)
    assert _samples(ours) == _samples(theirs)


def test_a_nan_goes_into_the_sum_only_as_with_prometheus() -> None:
    ours = Histogram("h", "h", ["l"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    theirs = Histogram("h", "h", ["l"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    observe(ours.labels("x"), math.nan)
    theirs.labels("x").observe(math.nan)
    mine, want = _samples(ours), _samples(theirs)
    assert mine.keys() == want.keys()
    for key, value in want.items():
        assert mine[key] == value or (math.isnan(mine[key]) and math.isnan(value)), key


def test_series_are_the_labelled_children() -> None:
    metrics = ServiceMetrics()
    series = metrics.series("toy", "acme")
    assert series is metrics.series("toy", "acme")
    assert series.inference_duration is metrics.inference_duration.labels("toy")
    assert series.defense_duration is metrics.defense_duration.labels("toy", "acme")
    assert series.request_duration("v2") is metrics.request_duration.labels("toy", "acme", "v2")
    assert series.requests(429) is metrics.requests.labels("toy", "acme", "429")
    for name in ("sensitivity", "noise_std", "samples", "label_flips", "repeated_queries"):
        assert getattr(series, name) is getattr(metrics, name).labels("toy", "acme"), name


def test_observe_prediction_records_each_instrument_once() -> None:
    metrics = ServiceMetrics()
    metrics.observe_prediction("toy", "acme", 0.002, 0.0001, np.array([0.3, 0.9]),
                               np.array([0.5, 0.1]), label_flips=1)  # fmt: skip
    value = metrics.registry.get_sample_value
    labels = {"model": "toy", "tenant": "acme"}
    assert value("dynanoise_inference_duration_seconds_count", {"model": "toy"}) == 1
    assert value("dynanoise_inference_duration_seconds_sum", {"model": "toy"}) == 0.002
    assert value("dynanoise_defense_duration_seconds_count", labels) == 1
    assert value("dynanoise_sensitivity_count", labels) == 2
    assert value("dynanoise_noise_std_sum", labels) == pytest.approx(0.6)
    assert value("dynanoise_samples_total", labels) == 2
    assert value("dynanoise_label_flips_total", labels) == 1


def test_count_adds_as_prometheus_inc_does() -> None:
    ours = Counter("c", "c", ["l"], registry=CollectorRegistry())
    theirs = Counter("c", "c", ["l"], registry=CollectorRegistry())
    for amount in [1, 3, 0, 2.5, 1e9]:
        count(ours.labels("x"), amount)
        theirs.labels("x").inc(amount)
    assert ours.labels("x")._value.get() == theirs.labels("x")._value.get() == 1e9 + 6.5


def test_a_request_and_its_repeats_are_counted_once() -> None:
    metrics = ServiceMetrics()
    metrics.observe_request("toy", "acme", "v1", 200, 0.01)
    metrics.observe_request("toy", "acme", "v1", 200, 0.02)
    metrics.observe_repeats("toy", "acme", 0)
    metrics.observe_repeats("toy", "acme", 3)
    value = metrics.registry.get_sample_value
    labels = {"model": "toy", "tenant": "acme"}
    assert value("dynanoise_requests_total", {**labels, "code": "200"}) == 2
    assert value("dynanoise_repeated_queries_total", labels) == 3


def test_a_throttled_gauge_publishes_the_latest_value_once_per_interval() -> None:
    class Recorded:
        def __init__(self) -> None:
            self.values: list[float] = []

        def set(self, value: float) -> None:
            self.values.append(value)

    gauge = Recorded()
    throttled = ThrottledGauge(gauge, interval=0.02)  # type: ignore[arg-type]

    async def scenario() -> None:
        for depth in (1, 2, 3, 2):
            throttled.set(depth)
        assert gauge.values == []  # nothing written in the turn that moved it
        await asyncio.sleep(0.06)
        assert gauge.values == [2]  # one write, of the latest value
        throttled.set(0)
        await asyncio.sleep(0.06)
        assert gauge.values == [2, 0]

    async def left_pending() -> None:  # its loop closes before the write is due
        throttled.set(7)

    async def on_the_next_loop() -> None:
        throttled.set(5)
        await asyncio.sleep(0.06)

    asyncio.run(scenario())
    asyncio.run(left_pending())
    asyncio.run(on_the_next_loop())
    assert gauge.values == [2, 0, 5]
