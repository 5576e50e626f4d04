"""The short form of the load test (the 60 s, 64-client run is `make load`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .loadtest import run_load


@pytest.mark.slow
def test_short_load_has_no_errors_honours_each_tenant_and_keeps_memory_flat(
    tmp_path: Path,
) -> None:
    report = run_load(
        duration=5.0,
        clients=8,
        client_processes=1,
        tenants=3,
        workers=1,
        workdir=tmp_path,
        rss_window=1.0,
        max_rss_growth_mb=40.0,
        max_requests_per_client=2000,
    )
    assert report.requests > 0
    assert report.errors == 0, report.error_samples
    assert report.mismatches == 0
    assert report.answers_differ_between_tenants
    assert report.server_exit_code == 0
    assert report.ok, report.problems
