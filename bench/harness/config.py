"""What one benchmark run measures, and how hard: full, --quick, or a test's tiny run."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .venvs import VENVS_DIR

SECTIONS = ("defense", "service", "binary", "batching", "peers", "overload", "memory")
RESULTS_DIR = Path("bench")  # the committed results: only a full run writes them by default
QUICK_DIR = Path("reports/bench-quick")  # --quick's default: never over the committed results


@dataclass(frozen=True)
class BenchConfig:
    """Every knob of a run. ``full()`` and ``quick()`` are the two presets."""

    out_dir: Path = RESULTS_DIR
    models_dir: Path = Path("models")
    model: str | None = None  # a directory under models_dir; default: models/DEFAULT
    sections: tuple[str, ...] = SECTIONS
    # (a) defense micro-benchmark
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096)
    class_counts: tuple[int, ...] = (10, 100, 1000)
    defense_repeats: int = 5
    defense_target_s: float = 0.05
    # (b, b2, c) load tests
    concurrencies: tuple[int, ...] = (1, 8, 32, 64)
    tenants: tuple[str, ...] = ("on", "off", "keyed")
    load_seconds: int = 5
    warmup_seconds: int = 1  # the same load before each run, not counted (run_wrk)
    load_repeats: int = 3
    binary_features: tuple[int, ...] = (784, 3072)
    binary_rows: tuple[int, ...] = (1, 16)
    binary_concurrency: int = 8
    batching_concurrencies: tuple[int, ...] = (8, 32, 64)
    batching_max_delay_ms: float = 2.0
    overload_concurrencies: tuple[int, ...] = (64, 256)  # past what one worker serves
    # (c) peers and the framework floor: one-row requests at each of peer_concurrencies,
    # then each of peer_rows > 1 at comparison_concurrency (the floor sits those out)
    peer_concurrencies: tuple[int, ...] = (1, 8, 32, 64)
    peer_rows: tuple[int, ...] = (1, 32)
    comparison_concurrency: int = 32
    venvs_dir: Path = VENVS_DIR  # the peers' venvs, bench/.venvs/<peer> (make bench-venvs)
    bentoml_python: Path | None = None  # overrides venvs_dir/bentoml
    plots: bool = True
    command: str = "dynanoise bench"
    work_dir: Path | None = field(default=None)  # scratch space; a temporary one if None

    @classmethod
    def full(cls, **changes: object) -> BenchConfig:
        return replace(cls(), **changes)  # type: ignore[arg-type]

    @classmethod
    def quick(cls, **changes: object) -> BenchConfig:
        """Under three minutes: fewer sizes, one-second loads, two or three repeats;
        written under reports/, not over the committed results."""
        preset = replace(
            cls(),
            batch_sizes=(1, 16, 256, 1024, 4096),
            class_counts=(10, 100, 1000),
            defense_repeats=3,
            defense_target_s=0.01,
            concurrencies=(1, 32),
            tenants=("on", "off"),
            load_seconds=1,
            warmup_seconds=0,
            load_repeats=2,
            binary_features=(784, 3072),
            binary_rows=(16,),
            batching_concurrencies=(8, 32),
            peer_concurrencies=(8, 32),
            peer_rows=(1,),
            overload_concurrencies=(64,),
            out_dir=QUICK_DIR,
        )
        return replace(preset, **changes)  # type: ignore[arg-type]
