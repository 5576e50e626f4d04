"""The benchmark's peers section: the framework floor and the peers' launchers, the
service's ratios to the best peer and to the floor, and peers without a venv reported
as not measured instead of failing the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.harness.cli import build_parser
from bench.harness.comparison import NOT_BUILT, compare, python_for, summarize_peers
from bench.harness.config import BenchConfig
from bench.harness.floor_app import floor_app
from bench.harness.load import LoadResult
from bench.harness.models import prepare_models
from bench.harness.payloads import sample_rows, v1_json, v2_json
from bench.harness.report import summarize
from bench.harness.report_peers import peers_markdown
from bench.harness.runner import _load_summary, run_bench
from bench.harness.servers import PEERS, Peer, floor_server, naive_server, peer_server
from bench.harness.venvs import VENVS_DIR

META = {"model": {"name": "m"}}  # what summarize reads of a run's meta
ANSWER = b'{"model":"m","model_version":"1","predictions":[{"label":"a","probabilities":[1.0]}]}'


def _result(throughput: float, p99_ms: float = 1.0) -> LoadResult:
    """A one-second run of ``throughput`` requests."""
    return LoadResult(concurrency=8, requests=int(throughput), duration_s=1.0, errors=0,
                      p50_ms=p99_ms / 2, p90_ms=p99_ms, p99_ms=p99_ms)  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("models")
    served, name = prepare_models(work / "none", work)  # the linear 784 -> 10 stand-in
    return served / name


def test_the_floor_drains_the_body_and_answers_the_fixed_bytes() -> None:
    client = TestClient(floor_app(ANSWER))
    response = client.post("/anything", content=b"x" * 200_000)
    assert response.status_code == 200
    assert response.content == ANSWER
    assert response.headers["content-length"] == str(len(ANSWER))
    assert response.headers["content-type"] == "application/json"


def test_the_floor_launcher_serves_its_answer_like_the_service_does(tmp_path: Path) -> None:
    body = v1_json(sample_rows(1, 784))
    with floor_server(ANSWER, tmp_path) as server:
        response = httpx.post(f"{server.url}/v1/models/m/predict", content=body.body)
    assert response.status_code == 200 and response.content == ANSWER
    # `dynanoise serve`'s uvicorn settings: no Server header.
    assert "server" not in response.headers


def test_the_naive_launcher_answers_a_softmax_per_row(model_dir: Path, tmp_path: Path) -> None:
    body = v1_json(sample_rows(3, 784))
    with naive_server(model_dir, tmp_path) as server:
        response = httpx.post(f"{server.url}/predict", content=body.body, headers=body.headers)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    np.testing.assert_allclose([sum(p["probabilities"]) for p in predictions], [1.0] * 3, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("peer", [p for p in PEERS if p.venv is not None], ids=lambda p: p.name)
def test_each_built_peer_answers_a_softmax_per_row(
    peer: Peer, model_dir: Path, tmp_path: Path
) -> None:
    python = python_for(peer, VENVS_DIR)
    if python is None:
        pytest.skip(f"{peer.name}: no venv in {VENVS_DIR} (make bench-venvs)")
    rows = sample_rows(2, 784)
    body = v1_json(rows) if peer.protocol == "v1" else v2_json(rows)
    with peer_server(peer, python=python, model_dir=model_dir, model="linear784",
                     work_dir=tmp_path, floor_answer=b"") as server:  # fmt: skip
        response = httpx.post(
            server.url + peer.path.format(model="linear784"),
            content=body.body,
            headers=body.headers,
            timeout=30,
        )
    assert response.status_code == 200, response.text
    answer = response.json()
    if peer.protocol == "v1":
        sums = [sum(p["probabilities"]) for p in answer["predictions"]]
    else:
        (output,) = answer["outputs"]
        assert output["name"] == "probabilities" and output["shape"] == [2, 10]
        sums = np.reshape(output["data"], (2, 10)).sum(axis=1).tolist()
    np.testing.assert_allclose(sums, [1.0, 1.0], rtol=1e-5)


def test_the_best_peer_is_the_fastest_peer_never_the_floor() -> None:
    runs = {
        "service": [_result(3000), _result(2000)],
        "kserve": [_result(1000), _result(1000)],
        "mlserver": [_result(1900), _result(100)],  # the fastest round, not the best median
        "naive": [_result(1200), _result(1100)],
        "floor": [_result(20000), _result(10000)],
    }
    compared = compare(runs)
    assert compared["best_peer"] == "naive"
    ratios = compared["throughput_ratio"]
    assert set(ratios) == {"kserve", "mlserver", "naive", "floor"}
    # Pairs from the same round: 3000/1200 and 2000/1100.
    assert ratios["naive"]["min"] == pytest.approx(2000 / 1100)
    assert ratios["naive"]["max"] == pytest.approx(2.5)
    assert ratios["floor"]["median"] == pytest.approx(0.175)


def test_with_no_peer_there_is_no_best_peer() -> None:
    compared = compare({"service": [_result(3000)], "floor": [_result(9000)]})
    assert compared["best_peer"] is None
    assert compared["throughput_ratio"]["floor"]["median"] == pytest.approx(1 / 3)


def _peers_data(by_concurrency: dict[int, dict[str, tuple[float, float]]]) -> dict[str, object]:
    """results["peers"] from (throughput, p99 ms) per server per concurrency, one round."""
    data: dict[str, list[dict[str, object]]] = {"runs": [], "ratios": []}
    for concurrency, servers in by_concurrency.items():
        runs = {name: [_result(rps, p99)] for name, (rps, p99) in servers.items()}
        for name, results in runs.items():
            data["runs"].append({"server": name, "rows": 1, "concurrency": concurrency,
                                 **_load_summary(results)})  # fmt: skip
        data["ratios"].append({"rows": 1, "concurrency": concurrency, **compare(runs)})
    return {"servers": {}, **data}


def test_the_summary_names_the_best_peer_where_the_service_leads_it_least() -> None:
    data = _peers_data({
        1: {"service": (1000, 2.0), "kserve": (400, 4.0), "mlserver": (300, 5.0),
            "floor": (5000, 0.5)},
        8: {"service": (3000, 8.0), "kserve": (2000, 10.0), "mlserver": (1500, 12.0),
            "floor": (20000, 1.0)},
        32: {"service": (3600, 40.0), "kserve": (1800, 20.0), "mlserver": (2000, 25.0),
             "floor": (24000, 3.0)},
    })  # fmt: skip
    summary = summarize_peers(data)
    assert summary["throughput_ratio_vs_best_peer"] == pytest.approx(1.5)  # 3000 / 2000 at c8
    assert (summary["best_peer"], summary["best_peer_concurrency"]) == ("kserve", 8)
    assert summary["throughput_ratio_vs_mlserver"] == pytest.approx(1.8)  # at c32
    assert summary["fraction_of_framework_floor"] == pytest.approx(0.15)  # at c8
    # At c32 mlserver is the best peer by throughput: the p99 is compared with its p99.
    assert summary["p99_c32_over_best_peer"] == pytest.approx(40.0 / 25.0)
    assert summary["throughput_ratio_vs_naive"] is None  # not in this run

    met = summarize({"meta": META, "peers": data})["targets_met"]
    assert met["throughput_ratio_vs_best_peer"] is False
    assert met["fraction_of_framework_floor"] is False
    assert met["p99_c32_over_best_peer"] is False
    text = "\n".join(peers_markdown(data, summary))
    assert "| 1 | 8 | kserve | 1.50 (1.50-1.50) | 0.150 (0.150-0.150) |" in text


def test_nothing_measured_summarizes_to_none() -> None:
    summary = summarize_peers(None)
    assert set(summary.values()) == {None}
    assert summarize({"meta": META})["targets_met"]["fraction_of_framework_floor"] is None


def test_a_peer_without_its_venv_has_no_interpreter(tmp_path: Path) -> None:
    kserve = next(p for p in PEERS if p.name == "kserve")
    naive = next(p for p in PEERS if p.name == "naive")
    assert python_for(kserve, tmp_path) is None
    fake = tmp_path / "kserve" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("")
    assert python_for(kserve, tmp_path) == fake
    assert python_for(naive, tmp_path) is None  # runs in the service's own venv


def test_the_former_section_name_still_selects_the_peers() -> None:
    args = build_parser().parse_args(["--sections", "service,baselines"])
    assert args.sections == ("service", "peers")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_peers_without_a_working_venv_are_not_measured_and_the_rest_are(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "venvs" / "kserve" / "bin" / "python"  # a venv whose python fails
    broken.parent.mkdir(parents=True)
    broken.write_text("#!/bin/sh\necho 'no module named kserve'\nexit 3\n")
    broken.chmod(0o755)
    config = BenchConfig.quick(
        out_dir=tmp_path / "bench",
        models_dir=tmp_path / "no-models",
        work_dir=tmp_path / "work",
        sections=("peers",),
        peer_concurrencies=(2,),
        load_repeats=1,
        venvs_dir=tmp_path / "venvs",
        plots=False,
        command="dynanoise bench --test",
    )
    results = run_bench(config, log=lambda _: None)
    servers = results["peers"]["servers"]
    for name in ("mlserver", "litserve", "bentoml"):
        assert servers[name]["status"] == NOT_BUILT
    assert servers["kserve"]["status"].startswith("not measured (did not start: server exited")
    assert "no module named kserve" in servers["kserve"]["status"]
    assert servers["naive"]["status"] == servers["floor"]["status"] == "measured"
    runs = results["peers"]["runs"]
    assert {row["server"] for row in runs} == {"service", "naive", "floor"}
    assert all(row["errors"] == 0 and row["requests"] > 0 for row in runs)
    (ratios,) = results["peers"]["ratios"]
    assert ratios["best_peer"] == "naive" and set(ratios["throughput_ratio"]) == {"naive", "floor"}
    summary = results["summary"]
    assert summary["best_peer"] == "naive" and summary["throughput_ratio_vs_best_peer"] > 0
    assert summary["throughput_ratio_vs_mlserver"] is None
    written = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert written["peers"]["servers"]["bentoml"]["status"] == NOT_BUILT
    readme = (tmp_path / "bench" / "README.md").read_text()
    assert "## (c) Against the peers" in readme and NOT_BUILT in readme
