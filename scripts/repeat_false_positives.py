"""How often the repeated-query monitor flags ordinary traffic.

    python scripts/repeat_false_positives.py [--requests 100000] [--runs 5] [--json PATH]

Feeds request streams through a `RepeatedQueryMonitor` with the service's defaults
(60 s window, 2^20-bit filters) and prints, per stream, the rows sent, the rows flagged
as repeats and the rate:

- distinct real rows: the 1,797 digits (scikit-learn's `load_digits`, /16, as the
  audit and the README send them), one row a request; and distinct random rows in
  [0, 1] rounded to 4 decimals (the benchmark's `sample_rows`), 1,000 a batch;
- distinct random rows up to the sketch's capacity: 65,536 a window for two windows,
  the second looked up in both filters (the worst case the monitor's docstring states:
  from 4.6e-4 at its start to 9.2e-4 at its end, about 5e-4 on average);
- the load test's mix (`make load`, tests/load/loadtest.py): 4 keyed tenants, 16 rows
  drawn once from N(0, 1) (float32, seed 0), each request one of them for a random
  tenant, v1 or v2 alike. That traffic *is* repeated: every request after a tenant's
  first sight of a row repeats it, so nearly all of it is flagged, correctly.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.serving.repeats import RepeatedQueryMonitor

Batch = tuple[str, NDArray[np.float32]]  # (tenant, rows)

# tests/load/loadtest.py: `--tenants` default, `run_load`'s n_inputs, N_FEATURES, and
# `_setup`'s rows (np.random.default_rng(0).normal, float32).
LOAD_TENANTS, LOAD_INPUTS, LOAD_FEATURES, LOAD_SEED = 4, 16, 64, 0


@dataclass
class Measured:
    stream: str
    rows: int
    flagged: int
    rate: float


def digits_rows() -> Iterator[Batch]:
    """The 1,797 digits (all distinct), one a request."""
    from sklearn.datasets import load_digits

    rows = (load_digits().data / 16.0).astype(np.float32)
    for row in rows:
        yield "digits", row[None, :]


def random_rows(count: int, batch: int, seed: int) -> Iterator[Batch]:
    """Distinct rows in [0, 1] rounded to 4 decimals (bench/harness/payloads.sample_rows)."""
    rng = np.random.default_rng(seed)
    for _ in range(0, count, batch):
        yield "random", rng.random((batch, LOAD_FEATURES), dtype=np.float32).round(4)


def load_mix(requests: int, seed: int = 1) -> Iterator[Batch]:
    """The load test's requests: one of 16 fixed rows, for one of 4 tenants, each time."""
    rng = np.random.default_rng(LOAD_SEED)
    inputs = [
        rng.normal(size=LOAD_FEATURES).astype(np.float32)[None, :] for _ in range(LOAD_INPUTS)
    ]
    pick = random.Random(seed)
    for _ in range(requests):
        tenant = pick.randrange(LOAD_TENANTS)
        yield f"load-{tenant}", inputs[pick.randrange(LOAD_INPUTS)]


def measure(stream: str, batches: Iterable[Batch], monitor: RepeatedQueryMonitor) -> Measured:
    rows = flagged = 0
    for tenant, batch in batches:
        rows += len(batch)
        flagged += monitor.observe(tenant, batch)
    return Measured(stream, rows, flagged, flagged / rows if rows else 0.0)


class _Clock:
    """A settable clock, so one run can span windows without waiting for them."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def at_capacity(runs: int, seed: int) -> Measured:
    """Two windows of `capacity` distinct rows each, the second one measured; summed
    over ``runs`` monitors (each with its own random salt, as each process has)."""
    rows = flagged = capacity = 0
    for run in range(runs):
        clock = _Clock()
        monitor = RepeatedQueryMonitor(clock=clock)
        capacity = monitor.sketch.capacity
        measure("fill", random_rows(capacity, 1024, seed + 2 * run), monitor)
        clock.now += monitor.window_seconds
        second = measure("second", random_rows(capacity, 1024, seed + 2 * run + 1), monitor)
        rows, flagged = rows + second.rows, flagged + second.flagged
    stream = f"distinct random rows, 2nd window at capacity ({capacity:,} a window, {runs} runs)"
    return Measured(stream, rows, flagged, flagged / rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="load-mix requests")
    parser.add_argument("--runs", type=int, default=5, help="monitors for the capacity stream")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    results = [
        measure("digits, 1,797 distinct rows", digits_rows(), RepeatedQueryMonitor()),
        measure(
            "distinct random rows (sample_rows), 60,000",
            random_rows(60_000, 1000, seed=2),
            RepeatedQueryMonitor(),
        ),
    ]
    results.append(at_capacity(args.runs, seed=3))
    mix = f"load-test mix, {args.requests:,} requests"
    results.append(measure(mix, load_mix(args.requests), RepeatedQueryMonitor()))
    width = max(len(r.stream) for r in results)
    print(f"{'stream':<{width}}  {'rows':>9}  {'flagged':>9}  {'rate':>9}")
    for r in results:
        print(f"{r.stream:<{width}}  {r.rows:>9,}  {r.flagged:>9,}  {r.rate:>9.2e}")
    print(
        f"load mix: {LOAD_TENANTS} tenants x {LOAD_INPUTS} rows are new once each "
        f"(at most {LOAD_TENANTS * LOAD_INPUTS} rows unflagged); every other request "
        "repeats a row: flagged correctly, not a false positive"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
