"""The naive baseline of the benchmark: FastAPI + onnxruntime as a tutorial writes it.

The body is parsed into a pydantic model, the rows go through numpy into the ONNX
session, the softmax of the logits comes back through a pydantic response model.
No defense, no auth, no metrics: the bench compares the service against it.
Run with ``uvicorn --factory bench.harness.naive_app:app_from_env`` and
NAIVE_MODEL_DIR=<model dir>.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel


class PredictRequest(BaseModel):
    instances: list[list[float]]


class Prediction(BaseModel):
    label: str
    probabilities: list[float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]


def create_app(model_dir: Path) -> FastAPI:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_dir / manifest["file"]), options, providers=["CPUExecutionProvider"]
    )
    input_name = manifest["input"]["name"]
    labels = manifest["labels"]
    app = FastAPI()

    @app.post("/predict", response_model=PredictResponse)
    def predict(request: PredictRequest) -> PredictResponse:
        batch = np.asarray(request.instances, dtype=np.float32)
        (logits,) = session.run(None, {input_name: batch})
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        return PredictResponse(
            predictions=[
                Prediction(label=labels[int(row.argmax())], probabilities=row.tolist())
                for row in probabilities
            ]
        )

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: the model directory from NAIVE_MODEL_DIR."""
    return create_app(Path(os.environ["NAIVE_MODEL_DIR"]))
