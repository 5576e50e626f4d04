"""Prometheus metrics: the histograms move after requests, bulk observation is exact."""

from __future__ import annotations

import re

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from service.metrics import SENSITIVITY_BUCKETS, observe_many

from .conftest import ROW_TOY, Harness, bearer


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        matches_name = line.startswith(name + "{") or line.startswith(name + " ")
        if matches_name and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_scrape_shows_histograms_moving(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    before = harness.client.get("/metrics").text
    for _ in range(3):
        harness.client.post(
            "/v1/models/toy/predict", json={"instances": [ROW_TOY] * 4}, headers=bearer(key)
        )
    harness.client.post("/v1/models/toy/predict", json={"instances": []}, headers=bearer(key))
    after = harness.client.get("/metrics").text
    assert _sample(after, "dynanoise_sensitivity_count", tenant="acme", model="toy") == 12
    assert _sample(before, "dynanoise_sensitivity_count", tenant="acme") == 0
    assert _sample(after, "dynanoise_noise_std_count", tenant="acme") == 12
    assert _sample(after, "dynanoise_samples_total", tenant="acme") == 12
    assert _sample(after, "dynanoise_requests_total", tenant="acme", code="200") == 3
    assert _sample(after, "dynanoise_requests_total", tenant="acme", code="422") == 1
    assert (
        _sample(after, "dynanoise_request_duration_seconds_count", tenant="acme", endpoint="v1")
        == 4
    )
    assert _sample(after, "dynanoise_inference_duration_seconds_count", model="toy") == 3
    assert _sample(after, "dynanoise_defense_duration_seconds_count", tenant="acme") == 3
    assert "dynanoise_label_flips_total" in after or "dynanoise_label_flips" in after


def test_labels_never_come_from_raw_request_strings(harness: Harness) -> None:
    harness.client.post(
        "/v1/models/evil-model-name/predict",
        json={"instances": [ROW_TOY]},
        headers=bearer("dn_attacker_supplied"),
    )
    text = harness.client.get("/metrics").text
    assert "evil-model-name" not in text and "attacker" not in text
    assert re.search(r'dynanoise_requests_total\{code="401",model="-",tenant="-"\} 1', text)


def test_observe_many_equals_observe_one_by_one() -> None:
    values = np.random.default_rng(0).uniform(0, 1, size=1000)
    values[:10] = [0.0, 0.05, 0.1, 1.0, 0.5, 0.05000001, 0.95, 0.999, 0.25, 0.75]
    bulk = Histogram("h", "h", buckets=SENSITIVITY_BUCKETS, registry=CollectorRegistry())
    single = Histogram("h", "h", buckets=SENSITIVITY_BUCKETS, registry=CollectorRegistry())
    observe_many(bulk, values)
    for value in values:
        single.observe(float(value))

    def samples(h: Histogram) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for m in h.collect()
            for s in m.samples
            if not s.name.endswith("_created")
        }

    got, want = samples(bulk), samples(single)
    assert got.keys() == want.keys()
    for k in want:
        assert abs(got[k] - want[k]) < 1e-9, k
