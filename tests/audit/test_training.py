from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

from service.audit.architectures import EmbeddingBagClassifier, build_model  # noqa: E402
from service.audit.datasets import Dataset, Kind, load_dataset  # noqa: E402
from service.audit.splits import Split, check_disjoint  # noqa: E402
from service.audit.training import (  # noqa: E402
    export_onnx,
    onnx_logits,
    predict_logits,
    train_and_export,
    train_classifier,
    undefended_metrics,
)
from service.runtime.manifest import load_manifest  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
SHIPPED = sorted(p.parent for p in MODELS_DIR.glob("*/manifest.json"))


def _tiny(kind: Kind = "tabular", n: int = 120) -> Dataset:
    """A small random data set of each kind; labels depend on the inputs."""
    rng = np.random.default_rng(0)
    if kind == "text":
        x = rng.integers(0, 30, size=(n, 6)).astype(np.int64)
        x[:, 4:] = 0
        return Dataset(
            "tiny",
            x,
            (x[:, 0] % 2).astype(np.int64),
            ["a", "b"],
            (6,),
            "text",
            "t",
            vocabulary=[str(i) for i in range(30)],
        )
    shape = (1, 8, 8) if kind == "image" else (8,)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = (x.reshape(n, -1)[:, 0] > 0).astype(np.int64) + (x.reshape(n, -1)[:, 1] > 0)
    return Dataset("tiny", x, y.astype(np.int64), ["0", "1", "2"], shape, kind, "t")


@pytest.mark.parametrize(("arch", "kind"), [("mlp", "tabular"), ("cnn", "image"), ("text", "text")])
def test_exported_onnx_logits_match_torch_for_every_batch_size(
    tmp_path: Path, arch: str, kind: Kind
) -> None:
    data = _tiny(kind)
    model = train_classifier(data, np.arange(80), arch=arch, hidden=(16,), epochs=2, progress=False)
    dtype: Literal["float32", "int64"] = "int64" if kind == "text" else "float32"
    path = export_onnx(model, tmp_path / "m.onnx", data.input_shape, dtype=dtype, vocab_size=30)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and out.name == "logits"
    assert inp.type == f"tensor({'int64' if kind == 'text' else 'float'})"
    assert inp.shape[1:] == list(data.input_shape) and not isinstance(inp.shape[0], int)
    for rows in (slice(0, 1), slice(0, 17), slice(0, 120)):
        np.testing.assert_allclose(
            onnx_logits(path, data.x[rows]), predict_logits(model, data.x[rows]), atol=1e-4
        )


def test_training_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone() -> None:
    data = _tiny()
    state = torch.get_rng_state()
    first = train_classifier(data, np.arange(100), epochs=3, hidden=(16,), seed=4, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    second = train_classifier(data, np.arange(100), epochs=3, hidden=(16,), seed=4, progress=False)
    other = train_classifier(data, np.arange(100), epochs=3, hidden=(16,), seed=5, progress=False)
    np.testing.assert_array_equal(predict_logits(first, data.x), predict_logits(second, data.x))
    assert not np.allclose(predict_logits(first, data.x), predict_logits(other, data.x))


def test_training_fits_a_separable_problem() -> None:
    data = load_dataset(
        "synthetic",
        n_samples=300,
        n_features=5,
        n_classes=2,
        n_informative=2,
        class_sep=3.0,
        flip_y=0.0,
    )
    model = train_classifier(data, np.arange(200), epochs=15, hidden=(32,), lr=1e-2, progress=False)
    accuracy = (predict_logits(model, data.x).argmax(axis=1) == data.y)[200:].mean()
    assert accuracy > 0.9


def test_embedding_bag_ignores_padding_like_torch_embedding_bag() -> None:
    model = EmbeddingBagClassifier(vocab_size=12, n_classes=3, embedding_dim=5).eval()
    reference = torch.nn.EmbeddingBag(12, 5, mode="mean", padding_idx=0)
    reference.weight.data.copy_(model.embedding.weight.data)
    ids = torch.tensor([[3, 4, 5, 0, 0], [7, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    with torch.no_grad():
        expected = model.head(reference(ids))
        np.testing.assert_allclose(model(ids).numpy(), expected.numpy(), atol=1e-6)
        np.testing.assert_allclose(model(ids[:, :3]).numpy()[:2], model(ids).numpy()[:2], atol=1e-6)


def test_build_model_rejects_unknown_or_mismatched_architectures() -> None:
    with pytest.raises(ValueError, match="unknown"):
        build_model("resnet", (8,), 2)
    with pytest.raises(ValueError, match="channels"):
        build_model("cnn", (64,), 2)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model("text", (6,), 2)


def _split(members: list[int], nonmembers: list[int]) -> Split:
    empty = np.array([], dtype=np.int64)
    m, nm = np.array(members), np.array(nonmembers)
    return Split(0, m, nm, empty, empty, nm, m, nm)


def test_metrics_separate_confident_members_from_uncertain_non_members() -> None:
    logits = np.zeros((6, 3))
    logits[:3, 0] = 10.0  # members: confident and right
    logits[3:, 0] = 0.1  # non-members: nearly uniform, still top-1 right
    metrics = undefended_metrics(logits, np.zeros(6, dtype=np.int64), _split([0, 1, 2], [3, 4, 5]))
    assert metrics["undefended_confidence_auc"] == 1.0 and metrics["undefended_loss_auc"] == 1.0
    assert metrics["undefended_confidence_attack_accuracy"] == 1.0
    assert metrics["train_accuracy"] == 1.0 and metrics["test_accuracy"] == 1.0
    same = undefended_metrics(
        np.tile(logits[:1], (6, 1)), np.zeros(6, dtype=np.int64), _split([0, 1, 2], [3, 4, 5])
    )
    assert same["undefended_confidence_auc"] == 0.5


def test_train_and_export_writes_a_manifest_the_runtime_accepts(tmp_path: Path) -> None:
    tmp_path = tmp_path / "syn-1"
    manifest = train_and_export(
        "synthetic",
        tmp_path,
        seed=1,
        epochs=2,
        hidden=(16,),
        max_members=50,
        dataset_options={"n_samples": 300, "n_features": 6, "n_classes": 3, "n_informative": 3},
        progress=False,
    )
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    served = load_manifest(tmp_path)
    assert served.name == tmp_path.name
    assert served.input.shape == [-1, 6] and served.labels == ["0", "1", "2"]
    assert manifest["training"]["epochs"] == 2 and manifest["training"]["max_members"] == 50
    assert len(manifest["split"]["members"]) == 50
    assert manifest["trained_on"]["options"]["n_samples"] == 300


@pytest.mark.parametrize("model_dir", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_is_servable_and_its_manifest_is_complete(model_dir: Path) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert {"name", "version", "file", "input", "output", "labels", "description"} <= set(manifest)
    assert {"trained_on", "training", "split", "metrics"} <= set(manifest)
    assert manifest["name"] == model_dir.name and manifest["input"]["name"] == "input"
    path = model_dir / manifest["file"]
    assert path.stat().st_size < 5 * 2**20
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.shape[1:] == manifest["input"]["shape"][1:]
    assert session.get_outputs()[0].name == manifest["output"]["name"]
    split = Split.from_manifest(manifest["split"])
    check_disjoint(split, manifest["trained_on"]["n_samples"])
    metrics = manifest["metrics"]
    for key in (
        "train_accuracy",
        "test_accuracy",
        "undefended_confidence_auc",
        "undefended_loss_auc",
    ):
        assert 0.0 <= metrics[key] <= 1.0


@pytest.mark.parametrize("model_dir", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_metrics_are_reproduced_from_the_onnx_file_and_the_dataset(model_dir: Path) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    data = load_dataset(manifest["trained_on"]["dataset"], **manifest["trained_on"]["options"])
    assert len(data) == manifest["trained_on"]["n_samples"]
    logits = onnx_logits(model_dir / manifest["file"], data.x)
    measured = undefended_metrics(logits, data.y, Split.from_manifest(manifest["split"]))
    for key, value in manifest["metrics"].items():
        assert measured[key] == pytest.approx(value, abs=1e-3), key


def test_default_model_exists_and_leaks_measurably() -> None:
    name = (MODELS_DIR / "DEFAULT").read_text().strip()
    manifest = json.loads((MODELS_DIR / name / "manifest.json").read_text())
    assert manifest["metrics"]["undefended_confidence_auc"] >= 0.6
    assert manifest["metrics"]["train_accuracy"] > manifest["metrics"]["test_accuracy"]


def test_text_models_export_int64_ids_and_ship_their_vocabulary(tmp_path: Path) -> None:
    data_dir = tmp_path / "glue"
    data_dir.mkdir()
    lines = [f"{'good fine' if i % 2 else 'bad awful'} film {i}\t{i % 2}" for i in range(30)]
    (data_dir / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    (data_dir / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
    out = tmp_path / "sst2"
    manifest = train_and_export(
        "sst2", out, data_dir=data_dir, epochs=1, dataset_options={"max_length": 8}, progress=False
    )
    assert manifest["input"] == {"name": "input", "shape": [-1, 8], "dtype": "int64"}
    vocabulary = json.loads((out / manifest["vocabulary_file"]).read_text())
    assert vocabulary[:2] == ["<pad>", "<unk>"] and "good" in vocabulary
    assert manifest["split"]["test"] == [30, 31]  # the dev set is the test set
    assert load_manifest(out).input.dtype == "int64"


def test_invalid_model_names_are_rejected_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model name"):
        train_and_export("digits", tmp_path / "bad name!", progress=False)
