"""LitServe's recommended path: a ``LitAPI`` wrapping onnxruntime behind ``LitServer``.

``python litserve_peer.py --port N`` with BENCH_MODEL_DIR=<model dir>
(``servers.litserve_server``): one API server, one inference worker on the CPU, the
ZeroMQ queue LitServe recommends above a hundred requests per second
(``fast_queue``), uvicorn's access log off, no client file. Body
``{"instances": [[...], ...]}`` to ``POST /predict``; the answer holds each row's label
and softmax.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort


class OnnxAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
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

    # No annotation on ``request``: LitServe builds its request model from it, and the
    # natural JSON body is a plain dict.
    def decode_request(self, request):
        return np.asarray(request["instances"], dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run(None, {self.input_name: batch})
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def encode_response(self, probabilities: np.ndarray) -> dict[str, Any]:
        return {
            "predictions": [
                {"label": self.labels[int(row.argmax())], "probabilities": row.tolist()}
                for row in probabilities
            ]
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ls.LitServer(
        OnnxAPI(), accelerator="cpu", devices=1, workers_per_device=1, fast_queue=True
    )
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
        access_log=False,
    )
