"""`dynanoise models add`: the manifest it writes from a graph, the graphs it refuses
with one line, and how the loaded classifier serves fixed-batch and softmax graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from service.runtime import inspect as graph_inspect
from service.runtime.session import OnnxClassifier

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

N_FEATURES, N_CLASSES = 4, 3
LABELS = "cat,dog,owl"


def write_graph(
    path: Path,
    *,
    batch: int | str = "batch",
    softmax: bool = False,
    input_type: int = TensorProto.FLOAT,
    second_input: bool = False,
    seed: int = 0,
) -> Path:
    """logits = x W + b (then Softmax when asked) as an ONNX file at ``path``."""
    rng = np.random.default_rng(seed)
    weights = (3 * rng.normal(size=(N_FEATURES, N_CLASSES))).astype(np.float32)
    bias = rng.normal(size=N_CLASSES).astype(np.float32)
    cast = input_type != TensorProto.FLOAT
    nodes = [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT)] if cast else []
    nodes.append(helper.make_node("MatMul", ["x" if cast else "input", "W"], ["xw"]))
    nodes.append(helper.make_node("Add", ["xw", "b"], ["z" if softmax else "out"]))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["out"], axis=1))
    inputs = [helper.make_tensor_value_info("input", input_type, [batch, N_FEATURES])]
    if second_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, 1]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs,
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, N_CLASSES])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    np.savez(path.with_suffix(".npz"), W=weights, b=bias)
    return path


def clean_logits(path: Path, x: np.ndarray) -> np.ndarray:
    w = np.load(path.with_suffix(".npz"))
    return x.astype(np.float32) @ w["W"] + w["b"]


def add(models_dir: Path, path: Path, *extra: str, name: str = "tiny") -> int:
    argv = ["models", "add", str(path), "--name", name, "--labels", LABELS]
    return main([*argv, "--models-dir", str(models_dir), *extra])


def written_manifest(models_dir: Path, name: str = "tiny") -> dict[str, object]:
    manifest: dict[str, object] = json.loads((models_dir / name / "manifest.json").read_text())
    return manifest


@pytest.mark.parametrize(
    ("graph", "extra", "expected_input", "expected_kind"),
    [
        ({}, [], {"name": "input", "shape": [-1, 4], "dtype": "float32"}, "logits"),
        ({"batch": 1}, [], {"name": "input", "shape": [-1, 4], "dtype": "float32", "fixed_batch": 1}, "logits"),
        ({"softmax": True}, [], {"name": "input", "shape": [-1, 4], "dtype": "float32"}, "probabilities"),
        ({"softmax": True}, ["--output", "logits"], {"name": "input", "shape": [-1, 4], "dtype": "float32"}, "logits"),
        ({"input_type": TensorProto.INT64}, [], {"name": "input", "shape": [-1, 4], "dtype": "int64"}, "logits"),
    ],
    ids=["dynamic", "fixed-batch", "softmax", "softmax-as-told", "int64"],
)  # fmt: skip
def test_add_writes_the_manifest_the_graph_implies(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    graph: dict[str, object],
    extra: list[str],
    expected_input: dict[str, object],
    expected_kind: str,
) -> None:
    source = write_graph(tmp_path / "tiny.onnx", **graph)  # type: ignore[arg-type]
    models_dir = tmp_path / "models"
    assert add(models_dir, source, *extra) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "added tiny" in out
    manifest = written_manifest(models_dir)
    assert manifest["input"] == expected_input
    assert manifest["output"] == {"name": "out", "kind": expected_kind}
    assert manifest["labels"] == ["cat", "dog", "owl"]
    assert (models_dir / "tiny" / "model.onnx").read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    ("graph", "extra", "message"),
    [
        ({}, ["--labels", "cat,dog"], "2 labels given but output 'out' has 3 columns"),
        ({"second_input": True}, [], "2 inputs ('input', 'mask'); choose one with --input-name"),
        ({"input_type": TensorProto.UINT8}, [], "unsupported dtype"),
        ({}, ["--input-name", "pixels"], "no input named 'pixels'"),
        ({}, ["--name", "not a name"], "invalid manifest: name"),
    ],
    ids=["labels-count", "several-inputs", "dtype", "input-name", "bad-name"],
)
def test_add_refuses_a_graph_it_cannot_serve_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    graph: dict[str, object],
    extra: list[str],
    message: str,
) -> None:
    source = write_graph(tmp_path / "tiny.onnx", **graph)  # type: ignore[arg-type]
    models_dir = tmp_path / "models"
    assert add(models_dir, source, *extra) == 2  # argparse keeps the last --labels/--name
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not models_dir.exists()


def test_add_refuses_to_overwrite_a_model_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models_dir = tmp_path / "models"
    assert add(models_dir, write_graph(tmp_path / "a.onnx")) == 0
    softmax = write_graph(tmp_path / "b.onnx", softmax=True)
    assert add(models_dir, softmax) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert add(models_dir, softmax, "--replace", "--version", "2") == 0
    manifest = written_manifest(models_dir)
    assert manifest["version"] == "2"
    assert manifest["output"] == {"name": "out", "kind": "probabilities"}


def test_a_softmax_is_detected_by_probing_when_onnx_cannot_read_the_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_inspect, "_producer_op", lambda path, name: None)
    softmax = write_graph(tmp_path / "s.onnx", softmax=True)
    manifest, note = graph_inspect.manifest_for(softmax, name="s", labels=["a", "b", "c"])
    assert manifest["output"]["kind"] == "probabilities"
    assert "sum to 1" in note
    logits = write_graph(tmp_path / "l.onnx")
    manifest, _ = graph_inspect.manifest_for(logits, name="l", labels=["a", "b", "c"])
    assert manifest["output"]["kind"] == "logits"


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 9])
@pytest.mark.parametrize("graph", [{"batch": 1}, {"batch": 4}, {"softmax": True, "batch": 2}])
def test_fixed_batch_and_softmax_graphs_serve_logits_for_any_batch(
    tmp_path: Path, graph: dict[str, object], rows: int
) -> None:
    source = write_graph(tmp_path / "tiny.onnx", **graph)  # type: ignore[arg-type]
    assert add(tmp_path / "models", source) == 0
    model = OnnxClassifier.load(tmp_path / "models" / "tiny")
    x = np.random.default_rng(rows).normal(size=(rows, N_FEATURES)).astype(np.float32)
    served = model.logits(model.validate(x))
    expected = clean_logits(source, x)
    assert served.shape == (rows, N_CLASSES)
    if graph.get("softmax"):
        # log softmax(z) = z - logsumexp(z): the logits up to a constant per row.
        shift = (served - expected).astype(np.float64)
        np.testing.assert_allclose(shift, shift[:, :1].repeat(N_CLASSES, axis=1), atol=1e-4)
    else:
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)


def test_probabilities_of_zero_become_finite_logits(tmp_path: Path) -> None:
    source = write_graph(tmp_path / "tiny.onnx", softmax=True)
    assert add(tmp_path / "models", source) == 0
    model = OnnxClassifier.load(tmp_path / "models" / "tiny")
    served = model.logits(model.validate(np.full((2, N_FEATURES), 1e4, dtype=np.float32)))
    assert np.isfinite(served).all()
    assert served.min() == pytest.approx(np.log(np.finfo(np.float32).tiny), rel=1e-6)
