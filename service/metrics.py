"""Prometheus instruments, declared in one place and used by name.

With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR before the workers
start (`dynanoise serve` does): each worker writes its samples to files there
and the metrics listener (`service.api.metrics_listener`, its own port) aggregates them. Label values come from known tenants and models
only, never from raw request strings.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase

UNKNOWN = "-"  # label value when a request fails before its tenant or model is known

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
SENSITIVITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 .. 1.0
NOISE_STD_BUCKETS = (
    0.0,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    1.25,
    1.5,
    2.0,
    3.0,
    5.0,
)


class ServiceMetrics:
    """All of the service's instruments, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "dynanoise_request_duration_seconds",
            "Time from request received to response ready.",
            ["model", "tenant", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "dynanoise_inference_duration_seconds",
            "Time a request waits for its model's logits: the ONNX call, and when "
            "requests share one (micro-batching, coalescing) the wait for that call.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.defense_duration = Histogram(
            "dynanoise_defense_duration_seconds",
            "Time spent in the DynaNoise defense per request.",
            ["model", "tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sensitivity = Histogram(
            "dynanoise_sensitivity",
            "Per-query sensitivity R in [0, 1] (1 = confident prediction).",
            ["model", "tenant"],
            buckets=SENSITIVITY_BUCKETS,
            registry=r,
        )
        self.noise_std = Histogram(
            "dynanoise_noise_std",
            "Per-query standard deviation of the logit noise.",
            ["model", "tenant"],
            buckets=NOISE_STD_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "dynanoise_requests",
            "Requests answered, by status code.",
            ["model", "tenant", "code"],
            registry=r,
        )
        self.samples = Counter(
            "dynanoise_samples", "Rows predicted.", ["model", "tenant"], registry=r
        )
        self.label_flips = Counter(
            "dynanoise_label_flips",
            "Rows whose defended argmax differs from the clean argmax.",
            ["model", "tenant"],
            registry=r,
        )
        self.repeated_queries = Counter(
            "dynanoise_repeated_queries",
            "Rows that repeat, exactly or nearly, a row the tenant sent in the last "
            "window or two (per process).",
            ["model", "tenant"],
            registry=r,
        )
        # Admission control (service.api.admission): requests answered 503 overloaded,
        # by reason (queue_full, queue_timeout), or dropped unanswered from the queue when
        # their client disconnected (client_gone), and the waiters queued now.
        self.requests_shed = Counter(
            "dynanoise_requests_shed",
            "Inference requests shed by admission control, by reason: answered 503 "
            "overloaded (queue_full, queue_timeout) or dropped from the queue when their "
            "client disconnected (client_gone).",
            ["reason"],
            registry=r,
        )
        self.admission_queue_depth = Gauge(
            "dynanoise_admission_queue_depth",
            "Inference requests waiting for admission (summed over worker processes).",
            registry=r,
            multiprocess_mode="livesum",
        )

        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._series: dict[tuple[str, str], _Series] = {}

    def child(self, metric: MetricWrapperBase, *label_values: str) -> Any:
        """``metric.labels(*label_values)``, memoised: ``labels`` validates and locks on
        every call, and a request touches eight children. Label values come
        from known tenants and models only, so the memo stays small."""
        key = (metric._name, label_values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*label_values)
        return found

    def series(self, model: str, tenant: str) -> _Series:
        """The children one (model, tenant) pair's requests record to, memoised: one
        lookup per request instead of one per instrument."""
        found = self._series.get((model, tenant))
        if found is None:
            found = self._series[(model, tenant)] = _Series(self, model, tenant)
        return found

    def observe_request(
        self, model: str, tenant: str, endpoint: str, code: int, seconds: float
    ) -> None:
        series = self.series(model, tenant)
        observe(series.request_duration(endpoint), seconds)
        count(series.requests(code), 1)

    def observe_prediction(
        self,
        model: str,
        tenant: str,
        inference_seconds: float,
        defense_seconds: float,
        sensitivity: NDArray[np.float64],
        noise_std: NDArray[np.float64],
        label_flips: int,
    ) -> None:
        """Record one predicted batch: the time in the model and in the defense, then
        `observe_defense`."""
        series = self.series(model, tenant)
        observe(series.inference_duration, inference_seconds)
        observe(series.defense_duration, defense_seconds)
        series.observe_defense(sensitivity, noise_std, label_flips)

    def observe_defense(
        self,
        model: str,
        tenant: str,
        sensitivity: NDArray[np.float64],
        noise_std: NDArray[np.float64],
        label_flips: int,
    ) -> None:
        """Record one batch: a sample per row in the histograms, then the counters."""
        self.series(model, tenant).observe_defense(sensitivity, noise_std, label_flips)

    def observe_shed(self, reason: str) -> None:
        """Count one request shed by admission control (``reason``: a known set)."""
        self.child(self.requests_shed, reason).inc()

    def observe_repeats(self, model: str, tenant: str, rows: int) -> None:
        """Count ``rows`` repeated rows of one batch (the series exists from the first
        batch on, at 0 while there are none)."""
        counter = self.series(model, tenant).repeated_queries
        if rows:
            count(counter, rows)


class _Series:
    """The children of one (model, tenant) pair, created on first use (`series`);
    the endpoint and status code labels of the request series from known sets."""

    __slots__ = (
        "_code_children",
        "_endpoint_children",
        "_metrics",
        "_model",
        "_tenant",
        "defense_duration",
        "inference_duration",
        "label_flips",
        "noise_std",
        "repeated_queries",
        "samples",
        "sensitivity",
    )

    def __init__(self, metrics: ServiceMetrics, model: str, tenant: str) -> None:
        self._metrics, self._model, self._tenant = metrics, model, tenant
        self.inference_duration = metrics.child(metrics.inference_duration, model)
        self.defense_duration = metrics.child(metrics.defense_duration, model, tenant)
        self.sensitivity = metrics.child(metrics.sensitivity, model, tenant)
        self.noise_std = metrics.child(metrics.noise_std, model, tenant)
        self.samples = metrics.child(metrics.samples, model, tenant)
        self.label_flips = metrics.child(metrics.label_flips, model, tenant)
        self.repeated_queries = metrics.child(metrics.repeated_queries, model, tenant)
        self._endpoint_children: dict[str, Any] = {}
        self._code_children: dict[int, Any] = {}

    def observe_defense(
        self, sensitivity: NDArray[np.float64], noise_std: NDArray[np.float64], label_flips: int
    ) -> None:
        """`ServiceMetrics.observe_defense` for this series."""
        observe_many(self.sensitivity, sensitivity)
        observe_many(self.noise_std, noise_std)
        count(self.samples, len(sensitivity))
        if label_flips:
            count(self.label_flips, label_flips)

    def request_duration(self, endpoint: str) -> Any:
        found = self._endpoint_children.get(endpoint)
        if found is None:
            m = self._metrics
            found = self._endpoint_children[endpoint] = m.child(
                m.request_duration, self._model, self._tenant, endpoint
            )
        return found

    def requests(self, code: int) -> Any:
        found = self._code_children.get(code)
        if found is None:
            m = self._metrics
            found = self._code_children[code] = m.child(
                m.requests, self._model, self._tenant, str(code)
            )
        return found


class ThrottledGauge:
    """Sets ``gauge`` to the latest value given, at most once per ``interval`` seconds,
    from the running event loop. For a gauge that moves on every request (the admission
    queue's depth, twice per queued request under overload) and is read every few
    seconds: each write costs about a microsecond, and several when the caches are cold.
    The gauge lags by at most ``interval``. A write still pending on a loop that has
    closed (a test client's) does not hold back those of the next loop."""

    def __init__(self, gauge: Gauge, interval: float = 0.01) -> None:
        self._gauge = gauge
        self._interval = interval
        self._latest = 0.0
        self._pending_on: asyncio.AbstractEventLoop | None = None

    def set(self, value: float) -> None:
        self._latest = value
        loop = asyncio.get_running_loop()
        if self._pending_on is not loop:
            self._pending_on = loop
            loop.call_later(self._interval, self._publish)

    def _publish(self) -> None:
        self._pending_on = None
        self._gauge.set(self._latest)


def count(counter: Counter, amount: float) -> None:
    """``counter.inc(amount)`` for a labelled child, without its per-call checks (the
    callers count rows and requests: never negative). Equivalence with ``inc`` is
    tested."""
    counter._value.inc(amount)


def observe(histogram: Histogram, value: float) -> None:
    """``histogram.observe(value)`` for a labelled child, without its per-call checks
    and its linear walk over the buckets: the bucket is found by bisection (the first
    upper bound >= value, as ``observe`` picks it; a NaN goes into the sum only, as
    there). Equivalence with ``observe`` is tested."""
    histogram._sum.inc(value)
    if value == value:
        histogram._buckets[bisect_left(histogram._upper_bounds, value)].inc(1)


def observe_many(histogram: Histogram, values: NDArray[np.float64]) -> None:
    """Observe every value of ``values`` at numpy speed.

    prometheus-client offers only a per-value ``observe``; for a batch of 1,024
    rows that costs more than the defense itself. This counts the values per
    bucket with one searchsorted and adds the counts to the bucket and sum
    values the client keeps. Equivalence with ``observe`` is tested.
    """
    if len(values) <= 4:
        for value in values.tolist():
            observe(histogram, value)
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    buckets = histogram._buckets
    for index in np.flatnonzero(counts):
        buckets[index].inc(float(counts[index]))
    histogram._sum.inc(float(np.sum(values)))


def render_latest(metrics: ServiceMetrics | None) -> tuple[bytes, str]:
    """The text exposition: aggregated over worker files in multiprocess mode (then
    ``metrics`` may be None: the supervisor of several workers has no instruments)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    if metrics is None:
        raise RuntimeError("no instruments to render outside multiprocess mode")
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST
