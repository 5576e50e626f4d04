"""The "Serve your own model" guide (docs/own-model.md), step by step: a torch model
exported with a fixed batch of 1, a torch model with a softmax inside, and a
scikit-learn model through skl2onnx are each exported, added with `models add`,
calibrated from held-out rows, checked, served and queried with batches of 1 and 8."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.cli import main
from service.settings import Settings

from ..conftest import Harness, bearer

N_FEATURES = 4
LABELS = ["setosa", "versicolor", "virginica"]
Predict = Callable[[np.ndarray], np.ndarray]


def _export_torch(path: Path, *, softmax: bool) -> Predict:
    """A tiny MLP exported as the guide says: an example batch of 1, no dynamic_axes."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layers = [torch.nn.Linear(N_FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)]
    model = torch.nn.Sequential(*layers, *([torch.nn.Softmax(dim=1)] if softmax else []))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.zeros(1, N_FEATURES),),
            str(path),
            input_names=["input"],
            output_names=["probabilities" if softmax else "logits"],
            dynamo=False,
        )

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x.astype(np.float32))).argmax(dim=1).numpy()

    return predict


def _export_sklearn(path: Path) -> Predict:
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx is not installed")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(
        n_samples=200, n_features=N_FEATURES, n_informative=3, n_redundant=0, n_classes=3,
        random_state=0,
    )  # fmt: skip
    model = LogisticRegression(max_iter=500).fit(x, y)
    onx = skl2onnx.convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
        options={"zipmap": False},
    )
    path.write_bytes(onx.SerializeToString())
    return lambda rows: model.predict(rows.astype(np.float32))


EXPORTS: dict[str, Callable[[Path], Predict]] = {
    "torch-fixed-batch": lambda path: _export_torch(path, softmax=False),
    "torch-softmax": lambda path: _export_torch(path, softmax=True),
    "sklearn": _export_sklearn,
}


def _add(models_dir: Path, path: Path, labels: list[str]) -> int:
    return main(
        ["models", "add", str(path), "--name", "own", "--labels", ",".join(labels),
         "--models-dir", str(models_dir)]
    )  # fmt: skip


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(np.float32)


def _predict(harness: Harness, key: str, rows: np.ndarray) -> np.ndarray:
    response = harness.client.post(
        "/v1/models/own/predict", json={"instances": rows.tolist()}, headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    probabilities = np.array([p["probabilities"] for p in response.json()["predictions"]])
    assert probabilities.shape == (len(rows), len(LABELS))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    return probabilities


@pytest.mark.parametrize("export", list(EXPORTS))
def test_an_exported_model_is_added_calibrated_and_served_defended(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], export: str
) -> None:
    path = tmp_path / f"{export}.onnx"
    predict = EXPORTS[export](path)
    assert _add(settings.models_dir, path, LABELS) == 0
    model_dir = settings.models_dir / "own"

    held_out = _rows(200, seed=1)
    np.savez(tmp_path / "held_out.npz", x=held_out, y=predict(held_out))
    assert main(["models", "calibrate-outputs", str(model_dir), "--data", str(tmp_path / "held_out.npz")]) == 0  # fmt: skip
    assert main(["models", "check", str(model_dir)]) == 0
    capsys.readouterr()

    with TestClient(create_app(settings)) as client:
        harness = Harness(client, settings)
        labelled = harness.add_tenant("labels", output_mode="calibrated_label")
        defended = harness.add_tenant("defended")
        for n in (1, 8):
            rows = _rows(n, seed=10 + n)
            answers = _predict(harness, labelled, rows)
            # calibrated_label answers keep the clean label: the model's own prediction.
            np.testing.assert_array_equal(answers.argmax(axis=1), predict(rows))
            _predict(harness, defended, rows)


def test_a_model_whose_labels_do_not_match_is_refused_and_the_others_still_serve(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.onnx"
    _export_torch(path, softmax=False)
    assert _add(settings.models_dir, path, ["yes", "no"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 labels given but output 'logits' has 3 columns" in err
    assert not (settings.models_dir / "own").exists()
    with TestClient(create_app(settings)) as client:
        harness = Harness(client, settings)
        key = harness.add_tenant("acme")
        response = client.post(
            "/v1/models/toy/predict", json={"instances": [[0.5, -1.0, 2.0, 0.25]]},
            headers=bearer(key),
        )  # fmt: skip
        assert response.status_code == 200, response.text
