"""`dynanoise bench` on tiny configurations: the files it writes and their keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.bench import BenchConfig, run_bench
from service.bench.load import LoadError, parse_wrk_output
from service.bench.memory import serving_install_size
from service.bench.models import default_model_dir, prepare_models
from service.bench.naive_app import create_app
from service.bench.payloads import sample_rows, v1_json, v2_binary
from service.bench.report import TARGETS, render_markdown
from service.bench.runner import _interleave
from service.bench.stats import ratios, spread
from service.cli import build_parser

SUMMARY_KEYS = {
    "defense_us_per_sample_b1024_k10",
    "defense_fraction_of_inference_b1",
    "throughput_ratio_defense_on_off",
    "throughput_ratio_vs_naive",
    "throughput_ratio_vs_bentoml",
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


def test_defense_and_memory_sections_write_json_markdown_and_plots(tmp_path: Path) -> None:
    results = run_bench(_tiny(tmp_path, ("defense", "memory")), log=lambda _: None)
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
    assert written["memory"]["service_worker_rss_mb"] > 0
    assert written["memory"]["serving_install"]["includes_torch"] is False
    assert written["meta"]["model"]["name"] == "linear784"
    readme = (out / "README.md").read_text()
    assert "dynanoise bench --test" in readme
    assert "## Targets" in readme and "## (a) Defense cost per sample" in readme
    assert "![defense_cost.png](defense_cost.png)" in readme
    assert (out / "defense_cost.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_one_second_load_measures_the_service_on_and_off(tmp_path: Path) -> None:
    config = _tiny(tmp_path, ("service",), concurrencies=(4,), load_repeats=1, load_seconds=1)
    results = run_bench(config, log=lambda _: None)
    rows = [row for row in results["service"] if "throughput_rps" in row]
    assert {(row["endpoint"], row["defense"]) for row in rows} == {
        ("v1", "on"), ("v1", "off"), ("v2", "on"), ("v2", "off"),
    }  # fmt: skip
    for row in rows:
        assert row["errors"] == 0 and row["requests"] > 0
        assert row["throughput_rps"]["median"] > 0 and row["p99_ms"]["median"] > 0
    assert "## (b) Service throughput" in (tmp_path / "bench" / "README.md").read_text()


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


def test_cli_registers_the_bench_command() -> None:
    args = build_parser().parse_args(["bench", "--quick", "--sections", "defense,memory"])
    assert args.quick and args.sections == ("defense", "memory")
