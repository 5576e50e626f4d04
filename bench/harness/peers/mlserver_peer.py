"""MLServer's recommended path for a model it has no runtime for: a custom runtime
(``MLModel``) wrapping onnxruntime, served over the Open Inference Protocol (v2).

``mlserver start <dir>`` with a settings.json (parallel_workers 0, debug off: no access
log, metrics_endpoint null: no metrics server or middleware, gzip off) and
``<dir>/<model>/model-settings.json`` whose implementation is
``mlserver_peer.OnnxRuntime`` and whose ``parameters.uri`` is the model directory
(``servers.mlserver_server`` writes both). The answer is the FP32 tensor
``probabilities`` [batch, classes].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        model_dir = Path(self.settings.parameters.uri)
        manifest = json.loads((model_dir / "manifest.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_dir / manifest["file"]), options, providers=["CPUExecutionProvider"]
        )
        self._input_name = manifest["input"]["name"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        batch = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (logits,) = self._session.run(None, {self._input_name: batch})
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("probabilities", probabilities)],
        )
