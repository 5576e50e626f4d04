"""BentoML's recommended path: a ``@bentoml.service`` class wrapping onnxruntime.

Runs only in its own virtual environment (bench/.venvs/bentoml): ``bentoml serve
bentoml_peer:Classifier --working-dir bench/harness/peers`` with BENCH_MODEL_DIR=<model
dir> (``servers.bentoml_server``). One worker, access log and metrics off. The body is
the v1 one, ``{"instances": [[...], ...]}``, to ``POST /predict``; the answer holds each
row's label and softmax.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import onnxruntime as ort
from bentoml.validators import DType


@bentoml.service(
    workers=1,
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
)
class Classifier:
    def __init__(self) -> None:
        model_dir = Path(os.environ["BENCH_MODEL_DIR"])
        manifest = json.loads((model_dir / "manifest.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / manifest["file"]), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = manifest["input"]["name"]
        self.labels = manifest["labels"]

    @bentoml.api
    def predict(self, instances: Annotated[np.ndarray, DType("float32")]) -> dict[str, Any]:
        (logits,) = self.session.run(None, {self.input_name: instances})
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        return {
            "predictions": [
                {"label": self.labels[int(row.argmax())], "probabilities": row.tolist()}
                for row in probabilities
            ]
        }
