"""The benchmark's overload section on a tiny run: three servers (admission off, at its
defaults, bounded), each driven by wrk, their figures and the summary's target row."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.harness.config import BenchConfig
from bench.harness.runner import run_bench

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")


def test_overload_section_reports_each_admission_variant(tmp_path: Path) -> None:
    config = BenchConfig.quick(
        out_dir=tmp_path / "bench",
        models_dir=tmp_path / "no-models",  # the linear stand-in model
        work_dir=tmp_path / "work",
        sections=("overload",),
        overload_concurrencies=(16,),
        load_seconds=1,
        load_repeats=1,
        plots=False,
        command="dynanoise bench --test",
    )
    results = run_bench(config, log=lambda _: None)
    rows = {row["admission"]: row for row in results["overload"]}
    assert set(rows) == {"off", "default", "bounded"}
    for row in rows.values():
        assert row["concurrency"] == 16 and row["requests"] > 0
        assert row["other_errors"] == 0
        assert row["served_rps"]["median"] > 0
        assert 0 <= row["shed_fraction"]["median"] < 1
    assert rows["off"]["shed_fraction"]["median"] == 0  # nothing is ever shed when off
    assert results["summary"]["p99_over_p50_c64"] is None  # measured at c16 only
    assert "## Overload" in (tmp_path / "bench" / "README.md").read_text()
