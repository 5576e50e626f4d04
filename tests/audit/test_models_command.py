"""`dynanoise models calibrate-outputs DIR`: the held-out answer tables written into a
model's manifest, in the form the serving runtime loads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.audit.calibration import CALIBRATION_ROWS_NOTE, calibration_rows
from service.audit.datasets import load_dataset
from service.audit.splits import Split
from service.cli import main
from service.defense import MAX_CONFIDENCE_BUCKETS, OutputCalibration
from service.runtime import OnnxClassifier
from service.runtime.manifest import ManifestError, load_manifest

torch = pytest.importorskip("torch")

from service.audit.training import train_and_export  # noqa: E402

OPTIONS: dict[str, Any] = {"n_samples": 300, "n_features": 6, "n_classes": 3, "n_informative": 3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A tiny synthetic model as train_and_export writes it, and its manifest."""
    out = tmp_path_factory.mktemp("models") / "syn"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        manifest = train_and_export(
            "synthetic",
            out,
            epochs=5,
            hidden=(16,),
            max_members=50,
            dataset_options=OPTIONS,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    yield out, manifest


def _copy(model_dir: Path, to: Path, *, without_calibration: bool) -> Path:
    to.mkdir()
    for path in model_dir.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    if without_calibration:
        manifest = json.loads((to / "manifest.json").read_text())
        del manifest["calibration"], manifest["calibration_rows"]
        (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def _held_out_fit(model_dir: Path) -> OutputCalibration:
    """OutputCalibration.fit on calibration_rows(split, n), with the served model's logits."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    dataset = load_dataset("synthetic", **OPTIONS)
    rows = calibration_rows(Split.from_manifest(manifest["split"]), len(dataset))
    model = OnnxClassifier.load(model_dir)
    logits = model.logits(model.validate(dataset.x[rows]))
    return OutputCalibration.fit(np.asarray(logits), dataset.y[rows])


def _run(model_dir: Path) -> int:
    return main(["models", "calibrate-outputs", str(model_dir)])


def test_train_and_export_already_writes_the_calibration_block(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    model_dir, manifest = trained
    assert manifest["calibration_rows"] == CALIBRATION_ROWS_NOTE
    block = manifest["calibration"]
    assert block["n_classes"] == 3 and len(block["tables"]) == MAX_CONFIDENCE_BUCKETS
    served = load_manifest(model_dir).output_calibration
    assert served is not None and served.n_classes == 3
    expected = _held_out_fit(model_dir)
    assert block["rows"] == expected.rows and block["accuracy"] == pytest.approx(expected.accuracy)
    for mine, theirs in zip(expected.tables, served.tables, strict=True):
        np.testing.assert_allclose(theirs, mine, rtol=0, atol=1e-5)


def test_calibrate_outputs_writes_a_block_the_runtime_loads(
    trained: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = _copy(trained[0], tmp_path / "syn", without_calibration=True)
    assert load_manifest(model_dir).output_calibration is None
    assert _run(model_dir) == 0
    assert "answer tables for 1..8 confidence buckets" in capsys.readouterr().out
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["calibration_rows"] == CALIBRATION_ROWS_NOTE
    served = load_manifest(model_dir)
    assert served.output_calibration is not None
    assert served.output_calibration.n_classes == len(served.labels)
    # Exactly the held-out fit, as the JSON block it serialises to.
    expected = _held_out_fit(model_dir)
    assert manifest["calibration"] == json.loads(json.dumps(expected.as_dict()))
    loaded = served.output_calibration
    assert (loaded.rows, loaded.accuracy) == (expected.rows, expected.accuracy)
    for b in range(MAX_CONFIDENCE_BUCKETS):
        np.testing.assert_array_equal(loaded.edges[b], expected.edges[b])
        np.testing.assert_allclose(loaded.tables[b], expected.tables[b], rtol=0, atol=2e-7)


def test_calibrate_outputs_keeps_every_other_key_of_the_manifest(
    trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    model_dir = _copy(trained[0], tmp_path / "syn", without_calibration=False)
    before = json.loads((model_dir / "manifest.json").read_text())
    assert _run(model_dir) == 0
    after = json.loads((model_dir / "manifest.json").read_text())
    assert list(after) == list(before)
    assert {k: v for k, v in after.items() if k != "calibration"} == {
        k: v for k, v in before.items() if k != "calibration"
    }
    # A second run on the same model and rows writes the same block.
    assert _run(model_dir) == 0
    assert json.loads((model_dir / "manifest.json").read_text()) == after


def test_calibrate_outputs_without_a_model_exits_2(tmp_path: Path) -> None:
    assert _run(tmp_path / "absent") == 2


def test_the_runtime_refuses_a_block_that_cannot_answer(
    trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    model_dir = _copy(trained[0], tmp_path / "syn", without_calibration=False)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["calibration"]["n_classes"] = 4
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="calibration"):
        load_manifest(model_dir)
