"""The defense's share of request time, read from the service's own histograms: the
sums of a real app's scrapes, differenced over requests, per tenant."""

from __future__ import annotations

import pytest

from bench.harness.histograms import (
    DEFENSE,
    REQUEST,
    defense_share,
    parse_sums,
    total_requests,
)
from bench.harness.report import summarize

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


def test_the_share_of_cpu_divides_by_the_servers_cpu_per_request() -> None:
    exposition = "\n".join(
        [
            f"# TYPE {REQUEST} histogram",
            f'{REQUEST}_sum{{model="a",tenant="t",endpoint="v1"}} 2.0',
            f'{REQUEST}_count{{model="a",tenant="t",endpoint="v1"}} 4',
            f'{REQUEST}_sum{{model="a",tenant="u",endpoint="v1"}} 1.0',
            f'{REQUEST}_count{{model="a",tenant="u",endpoint="v1"}} 6',
            f"# TYPE {DEFENSE} histogram",
            f'{DEFENSE}_sum{{model="a",tenant="t"}} 0.0002',
            f'{DEFENSE}_count{{model="a",tenant="t"}} 4',
            "",
        ]
    )
    sums = parse_sums(exposition)
    assert total_requests(sums) == 10  # every tenant's requests, not the defense's count
    share = defense_share(sums, "t", cpu_us_per_request=200.0)
    assert share is not None
    assert share["defense_us_per_request"] == pytest.approx(50.0)
    assert share["share_of_cpu"] == pytest.approx(0.25)
    assert share["cpu_us_per_request"] == 200.0
    assert "share_of_cpu" not in (defense_share(sums, "t") or {})  # no CPU measured


@pytest.mark.parametrize(
    ("share", "share_of_cpu", "met"),
    [(0.005, 0.002, True), (0.005, 0.02, False), (0.02, 0.005, False), (0.005, None, True)],
)
def test_the_share_target_holds_against_request_time_and_cpu_alike(
    share: float, share_of_cpu: float | None, met: bool
) -> None:
    on = {"share": share} | ({} if share_of_cpu is None else {"share_of_cpu": share_of_cpu})
    summary = summarize({"meta": {"model": {"name": "m"}}, "defense_share": {"on": on}})
    assert summary["defense_share_of_server_cpu"] == share_of_cpu
    assert summary["targets_met"]["defense_share_of_request_time"] is met
