"""The defense's share of request time, read from the server's own histograms.

The on/off throughput ratio cannot resolve a ~1 us defense against ~300 us of request
(the same configuration's throughput moves 10-30 % between rounds here). The server
times both itself: ``dynanoise_defense_duration_seconds`` (noise + softmax, per
request) and ``dynanoise_request_duration_seconds`` (request received to response
ready). Their sums, differenced over a load run and divided, give the share directly.
The denominator leaves out uvicorn's HTTP work, so the share of the whole request as a
client sees it is smaller still. But requests that share a model call
(`LoopCoalescer`) overlap in time: each one's duration then also holds the work of the
others in its turn, and the sum of durations exceeds the time spent. So the share is
also given against the server's CPU time per request (``share_of_cpu``), which
overlapping cannot inflate; the target is checked against the larger of the two.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

DEFENSE = "dynanoise_defense_duration_seconds"
REQUEST = "dynanoise_request_duration_seconds"


@dataclass(frozen=True)
class Sums:
    """Histogram sums (seconds) and counts by (metric, tenant), from one scrape."""

    seconds: dict[tuple[str, str], float]
    counts: dict[tuple[str, str], float]

    def minus(self, earlier: Sums) -> Sums:
        return Sums(
            {k: v - earlier.seconds.get(k, 0.0) for k, v in self.seconds.items()},
            {k: v - earlier.counts.get(k, 0.0) for k, v in self.counts.items()},
        )


def parse_sums(exposition: str) -> Sums:
    """The defense and request histograms' ``_sum`` and ``_count`` per tenant, summed
    over the other labels (model, endpoint)."""
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    counts: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(exposition):
        if family.name not in (DEFENSE, REQUEST):
            continue
        for sample in family.samples:
            key = (family.name, sample.labels.get("tenant", ""))
            if sample.name == f"{family.name}_sum":
                seconds[key] += sample.value
            elif sample.name == f"{family.name}_count":
                counts[key] += sample.value
    return Sums(dict(seconds), dict(counts))


def scrape_sums(metrics_url: str, token: str | None = None) -> Sums:
    """One scrape of the server's metrics listener."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(metrics_url, headers=headers, timeout=10.0)
    response.raise_for_status()
    return parse_sums(response.text)


def defense_share(
    delta: Sums, tenant: str, cpu_us_per_request: float | None = None
) -> dict[str, float] | None:
    """The tenant's defense seconds over its request seconds in ``delta`` (a load run's
    difference of two scrapes), with both sums and the request count; None when the
    tenant served nothing in it. With ``cpu_us_per_request`` (the server's CPU time
    over the run per request, all tenants), also the defense's share of that."""
    requests = delta.counts.get((REQUEST, tenant), 0.0)
    request_s = delta.seconds.get((REQUEST, tenant), 0.0)
    if requests <= 0 or request_s <= 0:
        return None
    defense_s = delta.seconds.get((DEFENSE, tenant), 0.0)
    share = {
        "share": defense_s / request_s,
        "defense_s": defense_s,
        "request_s": request_s,
        "requests": requests,
        "defense_us_per_request": 1e6 * defense_s / requests,
        "request_us_per_request": 1e6 * request_s / requests,
    }
    if cpu_us_per_request:
        share["cpu_us_per_request"] = cpu_us_per_request
        share["share_of_cpu"] = share["defense_us_per_request"] / cpu_us_per_request
    return share


def total_requests(delta: Sums) -> float:
    """Requests of every tenant in ``delta`` (the request histogram's counts)."""
    return sum(count for (name, _), count in delta.counts.items() if name == REQUEST)
