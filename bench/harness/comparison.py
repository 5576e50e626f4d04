"""What the peers section computes: which peers can run, and, from runs measured in the
same interleaved rounds, the service's throughput ratio to each peer, to the best peer
and to the framework floor; then the headline figures of ``results.json``'s summary.

The best peer at a concurrency is the peer (never the floor, never the service) with
the highest median throughput there; ratios pair the service's run and the peer's run
of the same round (``stats.ratios``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .load import LoadResult
from .stats import Spread, ratios, spread
from .venvs import peer_python

if TYPE_CHECKING:
    from .servers import Peer

SERVICE = "service"
FLOOR = "floor"
NOT_BUILT = "not measured (make bench-venvs)"
MLSERVER_CONCURRENCY = 32  # throughput_ratio_vs_mlserver, like vs_naive and vs_bentoml
FLOOR_CONCURRENCY = 8  # fraction_of_framework_floor: where the issue measured the floor
P99_CONCURRENCY = 32  # p99_c32_over_best_peer


def python_for(peer: Peer, venvs_dir: Path, override: Path | None = None) -> Path | None:
    """The interpreter of ``peer``'s venv (``override`` first), None when not built."""
    if peer.venv is None:
        return None
    for candidate in (override, peer_python(peer.venv, venvs_dir)):
        if candidate is not None and candidate.is_file():
            return candidate.absolute()
    return None


def installed_version(python: Path, distribution: str) -> str | None:
    """``distribution``'s version as ``python`` sees it (None if it cannot tell)."""
    completed = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({distribution!r}))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return completed.stdout.strip() or None


def compare(runs: Mapping[str, Sequence[LoadResult]]) -> dict[str, Any]:
    """The service's throughput ratio to every other server in ``runs`` (one
    concurrency, one body size), and which peer was best."""
    service = [r.throughput for r in runs[SERVICE]]
    peers = {name: results for name, results in runs.items() if name not in (SERVICE, FLOOR)}
    best = max(
        peers, key=lambda name: spread([r.throughput for r in peers[name]])["median"], default=None
    )
    return {
        "best_peer": best,
        "throughput_ratio": {
            name: ratios(service, [r.throughput for r in results])
            for name, results in runs.items()
            if name != SERVICE
        },
    }


def _median(value: Spread | None) -> float | None:
    return None if value is None else value["median"]


def _run(data: Mapping[str, Any], server: str, concurrency: int) -> dict[str, Any] | None:
    for row in data.get("runs", []):
        if row["server"] == server and row["rows"] == 1 and row["concurrency"] == concurrency:
            return dict(row)
    return None


def _ratios(data: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """One-row comparisons by concurrency."""
    return {row["concurrency"]: row for row in data.get("ratios", []) if row["rows"] == 1}


def summarize_peers(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The summary's peer and floor figures (medians; None where not measured).

    - ``throughput_ratio_vs_best_peer``: the smallest, over the concurrencies, of service /
      best peer there; ``best_peer`` names that peer, ``best_peer_concurrency`` where.
    - ``throughput_ratio_vs_<peer>`` for mlserver, naive, bentoml: at c32.
    - ``fraction_of_framework_floor``: service / floor at c8.
    - ``p99_c32_over_best_peer``: the service's p99 over the best peer's (the best by
      throughput at c32), both at c32.
    """
    summary: dict[str, Any] = {
        "throughput_ratio_vs_best_peer": None,
        "best_peer": None,
        "best_peer_concurrency": None,
        "throughput_ratio_vs_mlserver": None,
        "throughput_ratio_vs_naive": None,
        "throughput_ratio_vs_bentoml": None,
        "fraction_of_framework_floor": None,
        "p99_c32_over_best_peer": None,
    }
    if not data:
        return summary
    by_concurrency = _ratios(data)
    against_best = [
        (row["throughput_ratio"][row["best_peer"]]["median"], concurrency, row["best_peer"])
        for concurrency, row in sorted(by_concurrency.items())
        if row["best_peer"] is not None
    ]
    if against_best:
        ratio, concurrency, peer = min(against_best)
        summary |= {"throughput_ratio_vs_best_peer": ratio, "best_peer": peer,
                    "best_peer_concurrency": concurrency}  # fmt: skip
    at_c32 = by_concurrency.get(MLSERVER_CONCURRENCY, {}).get("throughput_ratio", {})
    for name in ("mlserver", "naive", "bentoml"):
        summary[f"throughput_ratio_vs_{name}"] = _median(at_c32.get(name))
    at_floor = by_concurrency.get(FLOOR_CONCURRENCY, {}).get("throughput_ratio", {})
    summary["fraction_of_framework_floor"] = _median(at_floor.get(FLOOR))
    best = by_concurrency.get(P99_CONCURRENCY, {}).get("best_peer")
    service, peer_run = (
        _run(data, SERVICE, P99_CONCURRENCY),
        best and _run(data, best, P99_CONCURRENCY),
    )
    if service and peer_run and peer_run["p99_ms"]["median"] > 0:
        summary["p99_c32_over_best_peer"] = (
            service["p99_ms"]["median"] / peer_run["p99_ms"]["median"]
        )
    return summary
