"""`dynanoise audit` end to end: results.json / results.csv first, then report.md and
the PNGs, all re-renderable from the JSON alone."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.audit.protocol import PAPER_ATTACKS
from service.audit.report import render, render_markdown
from service.cli import build_parser, main
from service.commands.audit import _command

torch = pytest.importorskip("torch")

DEFENSES = ("no_defense", "temperature_only", "dynanoise_keyed")
ARGS = [
    "audit", "--dataset", "synthetic", "--defenses", ",".join(DEFENSES), "--epochs", "2",
    "--population", "6", "--paper-shadows", "1", "--repeats", "2", "--budgets", "1,2",
    "--bootstrap", "10", "--seed", "3", "--no-progress", "--max-auc", "0.99",
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


@pytest.mark.slow
def test_results_json_holds_every_number_and_how_it_was_made(report_dir: Path) -> None:
    results = json.loads((report_dir / "results.json").read_text())
    assert list(results["results"]) == list(DEFENSES) == list(results["worst_case"])
    for by_protocol in results["results"].values():
        assert list(by_protocol["paper"]["attacks"]) == list(PAPER_ATTACKS)
        assert "midput" in by_protocol["paper"] and "midput_ci" in by_protocol["paper"]
        for block in by_protocol.values():
            for report in block["attacks"].values():
                assert {"auc", "auc_ci", "tpr_at_1pct_fpr", "scorer", "mode", "queries"} <= set(
                    report
                )
    keyed = results["results"]["dynanoise_keyed"]["defense-aware"]["attacks"]
    assert {"lira_online/near_duplicate/2", "rmia/repeat/1", "spread/near_duplicate/2"} & set(keyed)
    assert {row["queries"] for row in results["query_budget"]} == {1, 2}
    assert results["evaluation"]["targets"] == 6
    assert results["gate"]["passed"] and results["gate"]["bounds"]["max_auc"] == 0.99
    assert results["config"]["seed"] == 3 and results["config"]["population"] == 6
    assert len(results["split"]["hash"]) == 16
    assert {"numpy", "torch", "scikit-learn", "dynanoise"} <= set(results["versions"])
    assert results["command"].startswith("dynanoise audit --dataset synthetic --out ")
    assert "--seed 3" in results["command"] and "--epochs 2" in results["command"]


@pytest.mark.slow
def test_results_csv_has_one_row_per_defense_protocol_and_attack(report_dir: Path) -> None:
    with (report_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    results = json.loads((report_dir / "results.json").read_text())
    expected = {
        (d, p, a)
        for d, by_protocol in results["results"].items()
        for p, block in by_protocol.items()
        for a in block["attacks"]
    }
    assert {(r["defense"], r["protocol"], r["attack"]) for r in rows} == expected
    assert len(rows) == len(expected)
    row = next(r for r in rows if (r["defense"], r["attack"]) == ("dynanoise_keyed", "conf"))
    report = results["results"]["dynanoise_keyed"]["paper"]["attacks"]["conf"]
    assert float(row["auc"]) == pytest.approx(report["auc"])
    assert float(row["auc_ci_low"]) == pytest.approx(report["auc_ci"][0])


@pytest.mark.slow
def test_report_md_leads_with_the_worst_case_then_the_paper_table(report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text()
    results = json.loads((report_dir / "results.json").read_text())
    assert f"`{results['command']}`" in text
    assert text.index("## Worst case over every attack") < text.index("## Paper protocol")
    header = "| defense | acc | conf | loss | shadow | lira | entropy | mentr | label-only (gap) |"
    assert header + " MIDPUT [95 % CI] |" in text
    assert "## Query budget" in text and "## Utility" in text and "## Gate" in text
    assert "n/a (too few non-members)" in text  # 6 x ~80 pairs back no TPR at 1 % FPR
    for png in ("roc_paper.png", "query_budget.png", "privacy_utility.png"):
        data = (report_dir / png).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
        assert f"]({png})" in text


@pytest.mark.slow
def test_the_gate_fails_the_run_and_names_the_attack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a if a != "0.99" else "0.5" for a in ARGS]
    args = [
        *args[: args.index("--defenses") + 1],
        "dynanoise_fresh",
        *args[args.index("--defenses") + 2 :],
    ]
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--no-plots", "--out", str(tmp_path)]) == 1
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "gate: FAIL dynanoise_fresh (defense-aware): auc" in err
    verdict = json.loads((tmp_path / "results.json").read_text())["gate"]
    assert not verdict["passed"] and verdict["violations"][0]["attack"] in err


@pytest.mark.slow
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
    assert main(["audit", "--out", str(tmp_path), "--endpoint", "http://127.0.0.1:9"]) == 2
    assert "--api-key" in capsys.readouterr().err


def test_quick_fills_only_the_options_left_out() -> None:
    from service.audit.config import AuditConfig, HttpTarget
    from service.commands.audit import _plan

    args = build_parser().parse_args(["audit", "--out", "x", "--quick", "--repeats", "3"])
    config, _, _ = _plan(args, AuditConfig, HttpTarget)
    assert (config.repeats, config.population, config.budgets) == (3, 8, (1, 4))
    full, _, _ = _plan(build_parser().parse_args(["audit", "--out", "x"]), AuditConfig, HttpTarget)
    assert (full.repeats, full.population, full.budgets) == (5, None, (1, 4, 16, 64))
