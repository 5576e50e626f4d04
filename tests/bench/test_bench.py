"""The benchmark harness (bench/harness, `python -m bench`, `dynanoise bench`) on tiny
configurations: the files it writes and their keys, and its command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.harness import cli as bench_cli
from bench.harness import runner
from bench.harness.cli import build_parser
from bench.harness.config import QUICK_DIR, RESULTS_DIR, BenchConfig
from bench.harness.load import LoadError, parse_wrk_output, run_wrk
from bench.harness.memory import serving_install_size
from bench.harness.models import default_model_dir, prepare_models
from bench.harness.naive_app import create_app
from bench.harness.payloads import sample_rows, v1_json, v2_binary
from bench.harness.report import TARGETS, render_markdown
from bench.harness.runner import _interleave, run_bench
from bench.harness.stats import ratios, spread
from service import cli
from service.commands import bench as bench_command

SUMMARY_KEYS = {
    "defense_us_per_sample_b1024_k10",
    "defense_fraction_of_inference_b1",
    "throughput_ratio_defense_on_off",
    "throughput_ratio_vs_naive",
    "throughput_ratio_vs_bentoml",
    "throughput_ratio_vs_best_peer",
    "best_peer",
    "throughput_ratio_vs_mlserver",
    "fraction_of_framework_floor",
    "p99_c32_over_best_peer",
}


def _tiny(tmp_path: Path, sections: tuple[str, ...], **changes: object) -> BenchConfig:
    return BenchConfig.quick(
        out_dir=tmp_path / "bench",
        models_dir=tmp_path / "no-models",  # no DEFAULT: the linear stand-in model
        work_dir=tmp_path / "work",
        sections=sections,
        batch_sizes=(1, 1024),
        class_counts=(10, 100),
        defense_repeats=2,
        defense_target_s=0.001,
        command="dynanoise bench --test",
        **changes,
    )


def test_defense_section_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    # In process, no load generator; the memory section (a served, warmed-up worker)
    # is measured with the load test below.
    results = run_bench(_tiny(tmp_path, ("defense",)), log=lambda _: None)
    out = tmp_path / "bench"
    written = json.loads((out / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    summary = written["summary"]
    assert set(summary) >= SUMMARY_KEYS
    assert summary["defense_us_per_sample_b1024_k10"] > 0
    assert summary["defense_fraction_of_inference_b1"] > 0
    assert summary["throughput_ratio_vs_naive"] is None  # not measured in this run
    assert set(summary["targets_met"]) == set(TARGETS)
    variants = {(row["variant"], row["batch"]) for row in written["defense"]}
    assert {("fresh", 1), ("keyed", 1024), ("naive_numpy", 1), ("inference", 1024)} <= variants
    for row in written["defense"]:
        spread_ = row["us_per_sample"]
        assert spread_["min"] <= spread_["median"] <= spread_["max"] and spread_["n"] == 2
    assert written["meta"]["model"]["name"] == "linear784"
    readme = (out / "README.md").read_text()
    assert "dynanoise bench --test" in readme
    assert "## Targets" in readme and "## (a) Defense cost per sample" in readme
    assert "![defense_cost.png](defense_cost.png)" in readme
    assert (out / "defense_cost.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_one_second_load_measures_the_service_on_and_off_and_its_memory(
    tmp_path: Path,
) -> None:
    config = _tiny(
        tmp_path, ("service", "memory"), concurrencies=(4,), load_repeats=1, load_seconds=1
    )
    results = run_bench(config, log=lambda _: None)
    assert results["memory"]["service_worker_rss_mb"] > 0
    assert results["memory"]["serving_install"]["includes_torch"] is False
    rows = [row for row in results["service"] if "throughput_rps" in row]
    assert {(row["endpoint"], row["defense"]) for row in rows} == {
        ("v1", "on"), ("v1", "off"), ("v2", "on"), ("v2", "off"),
    }  # fmt: skip
    for row in rows:
        assert row["errors"] == 0 and row["requests"] > 0
        assert row["throughput_rps"]["median"] > 0 and row["p99_ms"]["median"] > 0
    # The server's own histograms saw every request wrk counted, plus at most the ones
    # in flight when each run stopped (4 connections, 2 endpoints); the defense is a
    # positive part of each request's time.
    served = {t: sum(r["requests"] for r in rows if r["defense"] == t) for t in ("on", "off")}
    for tenant, share in results["defense_share"].items():
        assert served[tenant] <= share["requests"] <= served[tenant] + 4 * 2
        assert 0 < share["share"] < 1
        # The server's CPU per request over the run: positive, and the defense a part.
        assert share["cpu_us_per_request"] > share["defense_us_per_request"] > 0
        assert 0 < share["share_of_cpu"] < 1
    summary = results["summary"]
    assert summary["defense_share_of_request_time"] == results["defense_share"]["on"]["share"]
    on = results["defense_share"]["on"]
    assert summary["defense_share_of_server_cpu"] == on["share_of_cpu"]
    readme = (tmp_path / "bench" / "README.md").read_text()
    assert "## (b) Service throughput" in readme and "Defense share of request time" in readme


def test_wrk_summary_is_parsed_and_a_missing_one_is_an_error() -> None:
    line = (
        'BENCH_JSON {"requests": 100, "duration_us": 2000000, "bytes": 1, "errors_status": 2, '
        '"errors_connect": 0, "errors_read": 0, "errors_write": 0, "errors_timeout": 0, '
        '"p50_us": 1500, "p90_us": 2500, "p99_us": 9000, "mean_us": 1.0, "max_us": 10000}'
    )
    result = parse_wrk_output("Running 2s test\n" + line + "\n", "", concurrency=8)
    assert (result.requests, result.errors, result.p99_ms) == (100, 2, 9.0)
    assert result.throughput == pytest.approx(49.0)
    with pytest.raises(LoadError):
        parse_wrk_output("nothing", "boom", concurrency=8)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_warm_up_runs_the_same_load_first_and_is_not_counted() -> None:
    served = []

    class Counting(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/x"
        result = run_wrk(url, v1_json(sample_rows(1, 4)), concurrency=2, duration_s=1, warmup_s=1)
    finally:
        server.shutdown()
    assert result.requests > 0 and result.errors == 0
    # The warm-up's requests reached the server, but not the result.
    assert len(served) > result.requests * 1.3


def test_rounds_alternate_the_order_of_the_variants() -> None:
    calls: list[str] = []

    def measure(name: str) -> object:
        return lambda: calls.append(name) or len(calls)

    runs = _interleave({"on": measure("on"), "off": measure("off")}, repeats=3)  # type: ignore[dict-item]
    assert calls == ["on", "off", "off", "on", "on", "off"]
    assert runs == {"on": [1, 4, 5], "off": [2, 3, 6]}


def test_spreads_and_ratios() -> None:
    assert spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}
    assert ratios([2.0, 6.0], [1.0, 2.0])["median"] == pytest.approx(2.5)


def test_models_use_default_when_named_and_a_linear_stand_in_otherwise(tmp_path: Path) -> None:
    served, name = prepare_models(tmp_path / "none", tmp_path / "w1", extra_features=(12,))
    assert name == "linear784"
    assert {p.parent.name for p in served.glob("*/manifest.json")} == {"linear784", "image12"}
    (tmp_path / "models").mkdir()
    shutil.copytree(served / "image12", tmp_path / "models" / "small")
    (tmp_path / "models" / "DEFAULT").write_text("small\n")
    assert default_model_dir(tmp_path / "models") == tmp_path / "models" / "small"
    served, name = prepare_models(tmp_path / "models", tmp_path / "w2")
    assert name == "image12"


def test_naive_app_answers_softmax_per_row(tmp_path: Path) -> None:
    served, _ = prepare_models(tmp_path / "none", tmp_path / "w")
    client = TestClient(create_app(served / "linear784"))
    rows = sample_rows(3, 784)
    payload = v1_json(rows)
    response = client.post("/predict", content=payload.body, headers=payload.headers)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    np.testing.assert_allclose([sum(p["probabilities"]) for p in predictions], 1.0, rtol=1e-5)


def test_binary_payload_declares_its_header_length() -> None:
    payload = v2_binary(sample_rows(2, 5))
    header_length = int(payload.headers["Inference-Header-Content-Length"])
    header = json.loads(payload.body[:header_length])
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 2 * 5 * 4
    assert len(payload.body) == header_length + 40


def test_install_size_counts_the_serving_dependencies_only() -> None:
    size = serving_install_size()
    assert size["distributions"] > 5 and size["total_mb"] > 10
    assert not size["includes_torch"]


def test_markdown_renders_with_nothing_measured() -> None:
    summary = dict.fromkeys(TARGETS) | {"targets_met": dict.fromkeys(TARGETS)}
    meta = {
        "command": "dynanoise bench",
        "date": "today",
        "machine": {"cpu": "cpu", "cores": 2, "load_average_at_start": [0.0]},
        "model": {"name": "m", "input_shape": [-1, 4], "classes": 3},
        "load_seconds": 1,
        "load_repeats": 1,
    }
    text = render_markdown({"meta": meta, "summary": summary})
    assert "not measured" in text


def test_cli_parses_the_bench_options() -> None:
    args = build_parser().parse_args(["--quick", "--sections", "defense,memory"])
    assert args.quick and args.sections == ("defense", "memory") and args.out is None


def test_quick_runs_write_under_reports_not_over_the_committed_results() -> None:
    assert BenchConfig.full().out_dir == RESULTS_DIR == Path("bench")
    assert BenchConfig.quick().out_dir == QUICK_DIR
    assert not QUICK_DIR.is_relative_to(RESULTS_DIR)
    assert BenchConfig.quick(out_dir=Path("x")).out_dir == Path("x")


def test_dynanoise_bench_delegates_to_the_harness(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[BenchConfig] = []

    def fake_run(config: BenchConfig, log: object) -> dict[str, object]:
        seen.append(config)
        return {"summary": {"defense_us_per_sample_b1024_k10": 0.5, "targets_met": {}}}

    monkeypatch.setattr(runner, "run_bench", fake_run)
    assert cli.main(["bench", "--quick", "--sections", "defense", "--no-plots"]) == 0
    (config,) = seen
    assert config.out_dir == QUICK_DIR and config.sections == ("defense",) and not config.plots
    assert config.command == "dynanoise bench --quick --sections defense --no-plots"
    assert "defense_us_per_sample_b1024_k10: 0.5" in capsys.readouterr().out

    assert cli.main(["bench", "--sections", "nope"]) == 2
    assert capsys.readouterr().err.startswith("dynanoise bench: unknown sections")
    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: dynanoise bench") and "--quick" in help_text


def test_dynanoise_bench_without_the_harness_says_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What an installed wheel sees: no `bench` package, no checkout around `service`.
    for name in ("bench", "bench.harness", "bench.harness.cli"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(bench_command, "CHECKOUT", tmp_path)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "not part of the installed package" in err and "python -m bench" in err


def test_python_m_bench_answers_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m bench") and "--sections" in result.stdout


def test_a_run_writes_to_a_scratch_directory_unless_told_out_bench() -> None:
    """Issue 15: a full run wrote over the committed bench/ by default."""
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert bench_cli.out_dir(None, quick=False, now=when) == Path("reports/bench-20300102T030405Z")
    assert bench_cli.out_dir(None, quick=True) == QUICK_DIR
    assert bench_cli.out_dir(Path("bench"), quick=False) == Path("bench")
    assert bench_cli.is_committed(Path(__file__).resolve().parents[2] / "bench")
    assert not bench_cli.is_committed(QUICK_DIR)


def test_quick_refuses_to_write_over_the_committed_results(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runner, "run_bench", pytest.fail)
    committed = str(Path(__file__).resolve().parents[2] / "bench")
    assert cli.main(["bench", "--quick", "--out", committed, "--sections", "defense"]) == 2
    assert "never writes over the committed results" in capsys.readouterr().err


def test_missing_requirements_are_named_in_one_line_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: `dynanoise bench` in the serving install ran, then crashed on
    ModuleNotFoundError: matplotlib."""
    monkeypatch.setattr(runner, "run_bench", pytest.fail)
    monkeypatch.setattr(bench_cli.shutil, "which", lambda name: None)
    real_find_spec = bench_cli.importlib.util.find_spec
    monkeypatch.setattr(
        bench_cli.importlib.util,
        "find_spec",
        lambda name: None if name == "matplotlib" else real_find_spec(name),
    )
    assert cli.main(["bench", "--quick", "--sections", "defense,service"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "matplotlib" in line and "--no-plots" in line and "wrk" in line and "service" in line
    assert bench_cli.missing_requirements(["defense"], plots=False) == []
