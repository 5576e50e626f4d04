"""`dynanoise audit` end to end: results.json / results.csv first, then report.md and
the PNGs, all re-renderable from the JSON alone."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.audit.protocol import attack_names
from service.audit.report import render, render_markdown
from service.audit.scoring import REPORT_KEYS
from service.cli import build_parser, main
from service.commands.audit import _command

torch = pytest.importorskip("torch")

DEFENSES = ("no_defense", "temperature_only", "dynanoise_keyed")
ARGS = [
    "audit", "--dataset", "synthetic", "--defenses", ",".join(DEFENSES), "--epochs", "2",
    "--shadows", "4", "--paper-shadows", "1", "--queries", "2", "--bootstrap", "10",
    "--seed", "3", "--no-progress",
]  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("report") / "synthetic"
    threads = torch.get_num_threads()
    try:
        assert main([*ARGS, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    yield out


def test_results_json_holds_every_number_and_how_it_was_made(report_dir: Path) -> None:
    results = json.loads((report_dir / "results.json").read_text())
    assert list(results["results"]) == list(DEFENSES)
    for by_protocol in results["results"].values():
        for protocol, block in by_protocol.items():
            assert list(block["attacks"]) == attack_names(protocol)
            assert all(set(REPORT_KEYS) <= set(r) for r in block["attacks"].values())
            assert set(block["put"]) == set(block["attacks"]) and "midput" in block
    assert results["config"]["seed"] == 3 and results["config"]["n_shadows"] == 4
    assert len(results["split"]["hash"]) == 16
    assert {"numpy", "torch", "scikit-learn", "dynanoise"} <= set(results["versions"])
    assert results["command"].startswith("dynanoise audit --dataset synthetic --out ")
    assert "--seed 3" in results["command"] and "--epochs 2" in results["command"]


def test_results_csv_has_one_row_per_defense_protocol_and_attack(report_dir: Path) -> None:
    with (report_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    expected = {
        (d, p, a) for d in DEFENSES for p in ("paper", "defense-aware") for a in attack_names(p)
    }
    assert {(r["defense"], r["protocol"], r["attack"]) for r in rows} == expected
    assert len(rows) == len(expected)
    results = json.loads((report_dir / "results.json").read_text())
    row = next(r for r in rows if (r["defense"], r["attack"]) == ("dynanoise_keyed", "conf"))
    report = results["results"]["dynanoise_keyed"][row["protocol"]]["attacks"]["conf"]
    assert float(row["auc"]) == pytest.approx(report["auc"])
    assert float(row["auc_ci_low"]) == pytest.approx(report["ci"]["auc"][0])


def test_report_md_has_the_paper_table_shape_and_the_command(report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text()
    results = json.loads((report_dir / "results.json").read_text())
    assert f"`{results['command']}`" in text
    header = "| defense | acc | conf | loss | shadow | lira | entropy | mentr | label-only floor |"
    assert header + " MIDPUT |" in text
    assert "## Utility" in text and "## The label-only floor" in text
    assert text.count("| dynanoise_keyed |") >= 6  # accuracy, AUC, TPR, utility, floor tables
    for png in ("roc_paper.png", "roc_defense_aware.png", "privacy_utility.png"):
        data = (report_dir / png).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
        assert f"]({png})" in text


def test_report_renders_again_from_the_json_alone(report_dir: Path, tmp_path: Path) -> None:
    for name in ("results.json", "roc.json"):
        (tmp_path / name).write_bytes((report_dir / name).read_bytes())
    render(tmp_path, plots=False)
    results = json.loads((report_dir / "results.json").read_text())
    assert (tmp_path / "report.md").read_text() == render_markdown(results)


def test_command_line_in_reports_never_holds_the_api_key() -> None:
    args = build_parser().parse_args(
        ["audit", "--out", "x", "--endpoint", "http://h:1", "--api-key", "s3cret", "--model", "m"]
    )
    line = _command(args)
    assert "s3cret" not in line and "--api-key '***'" in line and "--model m" in line


def test_endpoint_without_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "--out", str(tmp_path), "--endpoint", "http://127.0.0.1:9"]) == 1
    assert "--api-key" in capsys.readouterr().err
