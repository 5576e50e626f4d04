"""`dynanoise models check DIR` and the manifest-against-graph comparison the loader
shares with it: one line per problem, exit 0 or 2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from service.runtime.inspect import check_model_dir
from service.runtime.session import ModelLoadError, OnnxClassifier

from .test_models_add import add, write_graph

Manifest = dict[str, Any]


def _set(path: str, value: object) -> Callable[[Manifest], None]:
    *parents, last = path.split(".")

    def edit(manifest: Manifest) -> None:
        node = manifest
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


def _drop_fixed_batch(manifest: Manifest) -> None:
    del manifest["input"]["fixed_batch"]


@pytest.fixture
def added(tmp_path: Path) -> Callable[..., Path]:
    def make(**graph: Any) -> Path:
        assert add(tmp_path / "models", write_graph(tmp_path / "tiny.onnx", **graph)) == 0
        return tmp_path / "models" / "tiny"

    return make


def _edit(model_dir: Path, edit: Callable[[Manifest], None]) -> None:
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("graph", [{}, {"batch": 1}, {"softmax": True}])
def test_a_directory_written_by_add_checks_ok(
    added: Callable[..., Path], capsys: pytest.CaptureFixture[str], graph: dict[str, Any]
) -> None:
    model_dir = added(**graph)
    capsys.readouterr()
    assert main(["models", "check", str(model_dir)]) == 0
    assert capsys.readouterr().out == f"{model_dir}: ok\n"


@pytest.mark.parametrize(
    ("graph", "edit", "problem"),
    [
        ({}, _set("input.name", "pixels"), "the graph has no input named 'pixels'"),
        ({}, _set("output.name", "logits"), "the graph has no output named 'logits'"),
        ({}, _set("input.dtype", "int64"), "input dtype tensor(float) != manifest int64"),
        ({}, _set("input.shape", [-1, 5]), "input shape [None, 4] != manifest [-1, 5]"),
        ({}, _set("labels", ["a", "b"]), "does not match 2 labels"),
        ({}, _set("input.fixed_batch", 2), "batch axis is dynamic but the manifest says"),
        ({"batch": 1}, _drop_fixed_batch, "fixes the batch axis at 1 but the manifest's input"),
        ({"batch": 1}, _set("input.fixed_batch", 4), "fixes the batch axis at 1, the manifest at 4"),
        ({"softmax": True}, _set("output.kind", "logits"), 'output.kind is "logits" but'),
        ({}, _set("output.kind", "probabilities"), 'output.kind is "probabilities" but'),
        ({}, _set("file", "other.onnx"), "model file 'other.onnx' not found"),
        ({}, _set("calibration", {"n_classes": 3}), "invalid manifest: calibration"),
    ],
    ids=[
        "input-name", "output-name", "dtype", "shape", "labels", "dynamic-batch",
        "fixed-batch-missing", "fixed-batch-differs", "softmax-as-logits",
        "logits-as-probabilities", "file", "calibration",
    ],
)  # fmt: skip
def test_check_names_each_problem_in_one_line_and_exits_2(
    added: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    graph: dict[str, Any],
    edit: Callable[[Manifest], None],
    problem: str,
) -> None:
    model_dir = added(**graph)
    _edit(model_dir, edit)
    capsys.readouterr()
    assert main(["models", "check", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{model_dir}: ") and problem in err, err


def test_check_reports_a_missing_manifest_and_a_corrupt_graph(
    added: Callable[..., Path], tmp_path: Path
) -> None:
    assert check_model_dir(tmp_path / "nowhere")[0].endswith("manifest not found")
    model_dir = added()
    (model_dir / "model.onnx").write_bytes(b"not onnx")
    (problem,) = check_model_dir(model_dir)
    assert problem.startswith("not a loadable ONNX model")


def test_the_loader_refuses_a_fixed_batch_graph_its_manifest_does_not_declare(
    added: Callable[..., Path],
) -> None:
    model_dir = added(batch=1)
    _edit(model_dir, _drop_fixed_batch)
    with pytest.raises(ModelLoadError, match="fixes the batch axis at 1") as refused:
        OnnxClassifier.load(model_dir)
    assert "\n" not in str(refused.value)
