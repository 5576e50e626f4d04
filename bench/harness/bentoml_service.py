"""The benchmark's BentoML service: the same ONNX model, served the BentoML way.

Runs only in the benchmark's own virtual environment (BentoML is never installed
next to the service): ``bentoml serve bentoml_service:Classifier --working-dir
bench/harness`` with BENCH_MODEL_DIR=<model dir>. The body is the v1 one,
``{"instances": [[...], ...]}``; the answer holds each row's label and softmax.
No defense: like the naive app, it is the framework's cost we compare.
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


@bentoml.service(workers=1, traffic={"timeout": 30})
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
