"""`dynanoise calibrate` on a tiny target: the choice within the utility budget, only
shadow and reference rows in the search and the re-audit, the report, the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.audit.splits import Split
from service.audit.tuning import PAPER, UtilityBudget, parse_settings

torch = pytest.importorskip("torch")

import service.audit.calibrate as calibrate_module  # noqa: E402
import service.audit.population as population_module  # noqa: E402
from service.audit.calibrate import CalibrateConfig, run_calibration  # noqa: E402
from service.audit.training import train_and_export  # noqa: E402
from service.audit.tuning_report import write_calibration_report  # noqa: E402
from service.cli import main  # noqa: E402

SETTINGS = ["dynanoise v=3 T=1 keyed_logits", "calibrated_label", "coarse B=2"]  # default order
MAX_ACCURACY_DROP = 0.005
TINY: dict[str, Any] = {
    "query_budget": 4,
    "population": 6,  # the smallest leave-one-out population: 2 IN and 2 OUT shadows a row
    "repeats": 1,
    "reaudit_population": 6,
    "reaudit_repeats": 1,
    "n_bootstrap": 20,
    "label_only": False,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny synthetic target: 40 members of 400 rows, a 32-unit MLP, 30 epochs."""
    out = tmp_path_factory.mktemp("calibrate") / "models" / "syn"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_and_export(
            "synthetic",
            out,
            epochs=30,
            hidden=(32,),
            max_members=40,
            dataset_options={"n_samples": 400, "n_features": 6, "n_classes": 3, "n_informative": 3},
            progress=False,
        )
        yield out
    finally:
        torch.set_num_threads(threads)


@dataclass
class Recorder:
    """Rows each population step was handed, by the seed of its population."""

    pools: dict[int, list[np.ndarray]] = field(default_factory=dict)
    trained_on: list[np.ndarray] = field(default_factory=list)
    read: list[np.ndarray] = field(default_factory=list)
    calibration_seeds: list[int] = field(default_factory=list)
    excluded: list[np.ndarray] = field(default_factory=list)


@dataclass
class Run:
    record: dict[str, Any]
    recorder: Recorder
    split: Split


def _tiny_config(model_dir: Path, budget: UtilityBudget) -> CalibrateConfig:
    return CalibrateConfig(
        model_dir=model_dir, budget=budget, settings=parse_settings(SETTINGS), **TINY
    )


@pytest.fixture(scope="module")
def run(model_dir: Path) -> Iterator[Run]:
    """One search and re-audit, every row handed to a population step recorded."""
    recorder = Recorder()
    train_population = calibrate_module.train_population
    population_calibrations = calibrate_module.population_calibrations
    train_with_recipe = population_module.train_with_recipe
    rows_of = population_module.rows_of

    def recording_train_population(dataset: Any, pool_rows: Any, *args: Any, **kwargs: Any) -> Any:
        recorder.pools.setdefault(kwargs["seed"], []).append(np.asarray(pool_rows))
        return train_population(dataset, pool_rows, *args, **kwargs)

    def recording_calibrations(population: Any, dataset: Any, **kwargs: Any) -> Any:
        recorder.calibration_seeds.append(kwargs["seed"])
        recorder.excluded.append(np.asarray(kwargs.get("exclude"), dtype=np.int64))
        return population_calibrations(population, dataset, **kwargs)

    def recording_training(dataset: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        recorder.trained_on.append(np.asarray(rows))
        return train_with_recipe(dataset, rows, *args, **kwargs)

    def recording_rows_of(dataset: Any, rows: Any) -> Any:
        recorder.read.append(np.asarray(rows))
        return rows_of(dataset, rows)

    manifest = json.loads((model_dir / "manifest.json").read_text())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibrate_module, "train_population", recording_train_population)
        patch.setattr(calibrate_module, "population_calibrations", recording_calibrations)
        patch.setattr(population_module, "train_with_recipe", recording_training)
        patch.setattr(population_module, "rows_of", recording_rows_of)
        record = run_calibration(
            _tiny_config(model_dir, UtilityBudget(max_accuracy_drop=MAX_ACCURACY_DROP)),
            progress=False,
        )
    yield Run(record, recorder, Split.from_manifest(manifest["split"]))


def test_the_chosen_setting_is_the_lowest_auc_within_the_accuracy_budget(run: Run) -> None:
    record = run.record
    assert [s["name"] for s in record["settings"]] == [PAPER, *SETTINGS]
    chosen = record["chosen"]
    assert chosen is not None
    by_name = {s["name"]: s for s in record["settings"]}
    picked = by_name[chosen["name"]]
    assert picked["within_budget"] and picked["accuracy_drop"] <= MAX_ACCURACY_DROP
    within = [s for s in record["settings"] if s["within_budget"]]
    assert picked["worst_case"]["auc"] == min(s["worst_case"]["auc"] for s in within)
    for s in record["settings"]:
        assert s["within_budget"] == (s["accuracy_drop"] <= MAX_ACCURACY_DROP), s["name"]
        assert s["within_budget"] == (not s["violations"])
    # The lossy modes keep the clean label, so they can never break an accuracy budget.
    assert by_name["calibrated_label"]["accuracy_drop"] == 0.0
    assert by_name["coarse B=2"]["accuracy_drop"] == 0.0
    assert chosen["params"]["output_mode"] in {"dynanoise", "calibrated_label", "coarse"}


def test_the_search_attacks_at_most_the_query_budget(run: Run) -> None:
    record = run.record
    assert record["budgets"] == [1, 4] and record["query_budget"] == 4
    assert record["search"]["population"] == 6
    # Every model trains on as many rows as the target: K * m member pairs.
    assert record["search"]["member_pairs"] == 6 * len(run.split.target_members)
    assert record["search"]["pool_rows"] == 2 * len(run.split.target_members)
    for s in record["settings"]:
        # "scorer/mode/N"; parameter-change differencing asks twice.
        assert int(s["worst_case"]["attack"].rsplit("/", 1)[1]) <= 4


def test_the_reaudit_attacks_the_chosen_setting_and_the_paper_again(run: Run) -> None:
    reaudit = run.record["reaudit"]
    assert set(reaudit["settings"]) == {PAPER, run.record["chosen"]["name"]}
    assert reaudit["population"] == 6 and reaudit["repeats"] == 1


def test_neither_members_nor_test_rows_reach_the_search_or_the_reaudit(run: Run) -> None:
    recorder, split = run.recorder, run.split
    held_back = np.concatenate([split.target_members, split.test])
    assert sorted(recorder.pools) == [0, 1]  # the search (seed 0) and the re-audit (seed 1)
    assert recorder.calibration_seeds == [0, 1]
    pools = [rows for seed in (0, 1) for rows in recorder.pools[seed]]
    every = [*pools, *recorder.trained_on, *recorder.read]
    assert len(recorder.trained_on) == 12 and len(recorder.read) >= 4
    for rows in every:
        assert rows.size and not np.intersect1d(rows, held_back).size
    for excluded in recorder.excluded:
        assert set(held_back.tolist()) <= set(excluded.tolist())
    # 280 reference rows, an 80-row search pool: the re-audit's pool avoids it.
    assert run.record["reaudit"]["pool_disjoint_from_search"]
    assert not np.intersect1d(recorder.pools[0][0], recorder.pools[1][0]).size


def test_the_report_writer_writes_json_markdown_and_the_frontier(run: Run, tmp_path: Path) -> None:
    paths = write_calibration_report(run.record, tmp_path / "report", "dynanoise calibrate x")
    assert [p.name for p in paths] == ["calibration.json", "calibration.md", "frontier.png"]
    written = json.loads(paths[0].read_text())
    assert written["command"] == "dynanoise calibrate x"
    assert written["chosen"] == run.record["chosen"]
    assert [s["name"] for s in written["settings"]] == [s["name"] for s in run.record["settings"]]
    markdown = paths[1].read_text()
    assert f"**Chosen: {run.record['chosen']['name']}**" in markdown
    assert "## Held-out re-audit" in markdown and "frontier.png" in markdown
    for name in (PAPER, *SETTINGS):
        assert f"| {name}" in markdown
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _cli(model_dir: Path, out: Path, *budget: str) -> int:
    threads = torch.get_num_threads()
    try:
        return main(
            [
                "calibrate",
                "--models-dir",
                str(model_dir.parent),
                "--model",
                model_dir.name,
                "--out",
                str(out),
                "--query-budget",
                "4",
                "--settings",
                "calibrated_label",
                "--population",
                "6",
                "--repeats",
                "1",
                "--reaudit-population",
                "6",
                "--reaudit-repeats",
                "1",
                "--bootstrap",
                "20",
                "--no-label-only",
                "--no-progress",
                "--threads",
                "1",
                *budget,
            ]
        )
    finally:
        torch.set_num_threads(threads)


def test_cli_exits_1_when_nothing_fits_the_budget(model_dir: Path, tmp_path: Path) -> None:
    assert _cli(model_dir, tmp_path, "--max-ece", "0") == 1
    record = json.loads((tmp_path / "calibration.json").read_text())
    assert record["chosen"] is None
    assert all(not s["within_budget"] for s in record["settings"])
    assert "No setting fits the utility budget" in (tmp_path / "calibration.md").read_text()
    assert (tmp_path / "frontier.png").exists()


def test_cli_exits_2_without_a_model(model_dir: Path, tmp_path: Path) -> None:
    code = main(["calibrate", "--models-dir", str(model_dir.parent), "--model", "absent"])
    assert code == 2


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_population_too_small_for_leave_one_out_is_refused_by_name(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="population"):
        CalibrateConfig(
            model_dir=model_dir,
            budget=UtilityBudget(),
            settings=parse_settings([]),
            **{**TINY, "population": 4, "reaudit_population": 4},
        )
