"""The defense's share of request time, read from the service's own histograms: the
sums of a real app's scrapes, differenced over requests, per tenant."""

from __future__ import annotations

import pytest

from bench.harness.histograms import DEFENSE, REQUEST, defense_share, parse_sums

from ..conftest import ROW_TOY, Harness, bearer
from ..scrape import scrape


def test_share_is_the_tenants_defense_seconds_over_its_request_seconds(harness: Harness) -> None:
    acme, other = harness.add_tenant("acme"), harness.add_tenant("other")
    before = parse_sums(scrape(harness.client))
    for _ in range(5):
        response = harness.client.post(
            "/v1/models/toy/predict", json={"instances": [ROW_TOY] * 4}, headers=bearer(acme)
        )
        assert response.status_code == 200
    harness.client.post(
        "/v1/models/toy/predict", json={"instances": [ROW_TOY]}, headers=bearer(other)
    )
    delta = parse_sums(scrape(harness.client)).minus(before)

    share = defense_share(delta, "acme")
    assert share is not None
    assert share["requests"] == 5
    assert share["defense_s"] == pytest.approx(delta.seconds[(DEFENSE, "acme")])
    assert share["request_s"] == pytest.approx(delta.seconds[(REQUEST, "acme")])
    # The defense is timed inside the request, so it is a positive part of it.
    assert 0 < share["share"] < 1
    assert share["defense_us_per_request"] < share["request_us_per_request"]
    assert defense_share(delta, "nobody") is None


def test_sums_add_over_models_and_endpoints() -> None:
    exposition = "\n".join(
        [
            f"# TYPE {REQUEST} histogram",
            f'{REQUEST}_sum{{model="a",tenant="t",endpoint="v1"}} 2.0',
            f'{REQUEST}_count{{model="a",tenant="t",endpoint="v1"}} 4',
            f'{REQUEST}_sum{{model="b",tenant="t",endpoint="v2"}} 1.0',
            f'{REQUEST}_count{{model="b",tenant="t",endpoint="v2"}} 2',
            f"# TYPE {DEFENSE} histogram",
            f'{DEFENSE}_sum{{model="a",tenant="t"}} 0.03',
            f'{DEFENSE}_count{{model="a",tenant="t"}} 6',
            "",
        ]
    )
    share = defense_share(parse_sums(exposition), "t")
    assert share == pytest.approx(
        {"share": 0.01, "defense_s": 0.03, "request_s": 3.0, "requests": 6,
         "defense_us_per_request": 5000.0, "request_us_per_request": 5e5}
    )  # fmt: skip
