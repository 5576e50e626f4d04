"""Prometheus instruments, declared in one place and used by name.

With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR before the workers
start (`dynanoise serve` does): each worker writes its samples to files there
and the metrics listener (`service.api.metrics_listener`, its own port) aggregates them. Label values come from known tenants and models
only, never from raw request strings.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
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
            "Time spent in the ONNX model per request.",
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

        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}

    def child(self, metric: MetricWrapperBase, *label_values: str) -> Any:
        """``metric.labels(*label_values)``, memoised: ``labels`` validates and locks on
        every call, and a request touches eight children. Label values come
        from known tenants and models only, so the memo stays small."""
        key = (metric._name, label_values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*label_values)
        return found

    def observe_request(
        self, model: str, tenant: str, endpoint: str, code: int, seconds: float
    ) -> None:
        self.child(self.request_duration, model, tenant, endpoint).observe(seconds)
        self.child(self.requests, model, tenant, str(code)).inc()

    def observe_defense(
        self,
        model: str,
        tenant: str,
        sensitivity: NDArray[np.float64],
        noise_std: NDArray[np.float64],
        label_flips: int,
    ) -> None:
        """Record one batch: a sample per row in the histograms, then the counters."""
        observe_many(self.child(self.sensitivity, model, tenant), sensitivity)
        observe_many(self.child(self.noise_std, model, tenant), noise_std)
        self.child(self.samples, model, tenant).inc(len(sensitivity))
        if label_flips:
            self.child(self.label_flips, model, tenant).inc(label_flips)

    def observe_repeats(self, model: str, tenant: str, rows: int) -> None:
        """Count ``rows`` repeated rows of one batch (the series exists from the first
        batch on, at 0 while there are none)."""
        counter = self.child(self.repeated_queries, model, tenant)
        if rows:
            counter.inc(rows)


def observe_many(histogram: Histogram, values: NDArray[np.float64]) -> None:
    """Observe every value of ``values`` at numpy speed.

    prometheus-client offers only a per-value ``observe``; for a batch of 1,024
    rows that costs more than the defense itself. This counts the values per
    bucket with one searchsorted and adds the counts to the bucket and sum
    values the client keeps. Equivalence with ``observe`` is tested.
    """
    if len(values) <= 4:
        for value in values:
            histogram.observe(float(value))
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
