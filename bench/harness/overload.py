"""Overload: a server driven past what it can serve, at concurrency 64 and 256.

Reports what admission control (`service.api.admission`) is for: the served
throughput, p50 and p99, and the fraction of answers shed (503). wrk's latency
percentiles are over every answer, shed ones included (wrk cannot tell them apart);
a shed answer takes at most the admission queue's delay. Any error other than a
503 (another status, a connect or read error, a timeout) is counted apart in
``other_errors``: the target is none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypedDict

from .config import BenchConfig
from .load import LoadResult, run_wrk
from .payloads import Payload, sample_rows, v1_json
from .servers import service_server
from .stats import spread

Log = Callable[[str], None]

OVERLOAD_CONCURRENCIES = (64, 256)

ADMISSION_OFF = {"DYNANOISE_ADMISSION_MAX_IN_FLIGHT": "0"}
ADMISSION_TIGHT = {
    "DYNANOISE_ADMISSION_MAX_IN_FLIGHT": "8",
    "DYNANOISE_ADMISSION_MAX_QUEUE": "256",
    "DYNANOISE_ADMISSION_MAX_QUEUE_DELAY_MS": "100",
}
"""Server environments to compare: admission off, and the setting that bounds the
tail (docs/reliability.md, Overload); the defaults are the third variant."""


class OverloadPoint(TypedDict):
    """One wrk run at ``concurrency``."""

    concurrency: int
    requests: int
    served_rps: float
    p50_ms: float
    p99_ms: float
    p99_over_p50: float
    shed_fraction: float
    other_errors: int


def overload_point(result: LoadResult) -> OverloadPoint:
    """The overload figures of a run made with ``count_503``."""
    return OverloadPoint(
        concurrency=result.concurrency,
        requests=result.requests,
        served_rps=result.throughput,  # answered without error: shed ones not counted
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        p99_over_p50=result.p99_ms / result.p50_ms if result.p50_ms > 0 else 0.0,
        shed_fraction=result.status_503 / result.requests if result.requests else 0.0,
        other_errors=result.errors - result.status_503,
    )


def measure_overload(
    url: str,
    payload: Payload,
    *,
    api_key: str | None = None,
    concurrencies: Sequence[int] = OVERLOAD_CONCURRENCIES,
    duration_s: float = 10.0,
    warmup_s: float = 0.0,
) -> dict[int, OverloadPoint]:
    """POST ``payload`` to ``url`` (an inference route of a started server) with wrk
    at each concurrency in turn; the figures by concurrency."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return {
        concurrency: overload_point(
            run_wrk(
                url,
                payload,
                concurrency=concurrency,
                duration_s=duration_s,
                extra_headers=headers,
                count_503=True,
                warmup_s=warmup_s,
            )
        )
        for concurrency in concurrencies
    }


VARIANTS = {"off": ADMISSION_OFF, "default": {}, "bounded": ADMISSION_TIGHT}
"""The servers of the benchmark's overload section, by name."""


def overload_section(
    config: BenchConfig, models_dir: Path, work: Path, model: str, features: int, log: Log
) -> list[dict[str, Any]]:
    """Admission off, at its defaults, and bounded (8 in flight), each its own server,
    driven at each overload concurrency in interleaved rounds (odd rounds reversed);
    per variant and concurrency, the spread of every figure over the rounds."""
    payload = v1_json(sample_rows(1, features))
    out: list[dict[str, Any]] = []
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                service_server(models_dir, work, extra_env=env, tag=f"overload-{name}")
            )
            for name, env in VARIANTS.items()
        }
        for concurrency in config.overload_concurrencies:
            points: dict[str, list[OverloadPoint]] = {name: [] for name in servers}
            names = list(servers)
            for round_ in range(config.load_repeats):
                for name in names if round_ % 2 == 0 else reversed(names):
                    server = servers[name]
                    (point,) = measure_overload(
                        f"{server.url}/v1/models/{model}/predict",
                        payload,
                        api_key=server.keys["on"],
                        concurrencies=(concurrency,),
                        duration_s=config.load_seconds,
                        warmup_s=config.warmup_seconds,
                    ).values()
                    points[name].append(point)
            for name, runs in points.items():
                out.append(
                    {
                        "admission": name,
                        "settings": VARIANTS[name],
                        "concurrency": concurrency,
                        "requests": sum(r["requests"] for r in runs),
                        "other_errors": sum(r["other_errors"] for r in runs),
                        **{
                            key: spread([float(r[key]) for r in runs])
                            for key in ("served_rps", "p50_ms", "p99_ms", "p99_over_p50",
                                        "shed_fraction")
                        },
                    }
                )  # fmt: skip
            log(f"  concurrency {concurrency}: done")
    return out
