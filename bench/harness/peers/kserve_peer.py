"""KServe's recommended path for a custom model: a ``kserve.Model`` subclass wrapping
onnxruntime, served by KServe's Python ``ModelServer`` over the v1 protocol.

``python kserve_peer.py --model_name NAME --http_port N --enable_grpc false --workers 1``
with BENCH_MODEL_DIR=<model dir> (``servers.kserve_server``). Tuned as a user easily
would: the per-request latency and timing logs and uvicorn's access log off, gRPC off. Body
``{"instances": [[...], ...]}`` to ``POST /v1/models/NAME:predict``; the answer holds
each row's label and softmax.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import kserve
import numpy as np
import onnxruntime as ort
from kserve.model_server import args as server_args


class OnnxModel(kserve.Model):
    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        manifest = json.loads((self.model_dir / "manifest.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.model_dir / manifest["file"]), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = manifest["input"]["name"]
        self.labels = manifest["labels"]
        self.ready = True
        return self.ready

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        batch = np.asarray(payload["instances"], dtype=np.float32)
        (logits,) = self.session.run(None, {self.input_name: batch})
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        return {
            "predictions": [
                {"label": self.labels[int(row.argmax())], "probabilities": row.tolist()}
                for row in probabilities
            ]
        }


if __name__ == "__main__":
    model = OnnxModel(server_args.model_name, Path(os.environ["BENCH_MODEL_DIR"]))
    server = kserve.ModelServer(enable_latency_logging=False)
    # What uvicorn's own access_log=False does (KServe passes no such option).
    access = logging.getLogger("uvicorn.access")
    access.handlers, access.propagate = [], False
    # KServe's timing middleware logs two lines a request (wall and CPU time) here.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.start([model])
