"""One ONNX classifier: an onnxruntime session plus its manifest. Returns clean
logits, which never leave the process: only the defense's output does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from ..defense.calibrated import OutputCalibration
from ..errors import BadInput
from .manifest import ManifestError, ModelManifest, load_manifest

_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}


class ModelLoadError(RuntimeError):
    """A model directory cannot be served (missing, corrupt or inconsistent)."""


class OnnxClassifier:
    """A loaded model: validates batches against the manifest and runs them."""

    def __init__(self, manifest: ModelManifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self._session = session
        self._input_name = manifest.input.name
        self._output_names = [manifest.output.name]
        self.dtype = np.dtype(manifest.input.dtype)
        self.sample_shape = manifest.input.sample_shape
        self.n_classes = len(manifest.labels)
        self.calibration: OutputCalibration | None = manifest.output_calibration
        """Held-out answer tables of the lossy output modes (None: the manifest has none)."""

    @classmethod
    def load(cls, model_dir: Path, *, intra_op_threads: int = 1) -> OnnxClassifier:
        try:
            manifest = load_manifest(model_dir)
        except ManifestError as exc:
            raise ModelLoadError(str(exc)) from exc
        path = model_dir / manifest.file
        if not path.is_file():
            raise ModelLoadError(f"{model_dir}: model file {manifest.file!r} not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types for bad files
            raise ModelLoadError(f"{path}: not a loadable ONNX model ({exc})") from exc
        _check_signature(manifest, session, path)
        model = cls(manifest, session)
        model._warm_up()
        return model

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def validate(self, batch: NDArray[np.generic]) -> NDArray[np.generic]:
        """Check a decoded batch: numeric, shape (n, *sample_shape), n >= 1, all finite.
        Returns it cast to the model's dtype."""
        if batch.dtype.kind not in "iuf":
            raise BadInput("inputs must be numbers")
        if batch.ndim == 0 or batch.shape[0] == 0:
            raise BadInput("the batch is empty")
        if batch.shape[1:] != self.sample_shape:
            raise BadInput(
                f"each instance must have shape {list(self.sample_shape)}, got {list(batch.shape[1:])}"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            cast = batch.astype(self.dtype, copy=False)
        if cast.dtype.kind == "f" and not np.isfinite(cast).all():
            raise BadInput("inputs must be finite (no NaN or Inf, and within float32 range)")
        return cast

    def logits(self, batch: NDArray[np.generic]) -> NDArray[np.float32]:
        """Clean logits (n, k) for an already validated batch."""
        (out,) = self._session.run(self._output_names, {self._input_name: batch})
        return np.asarray(out)

    def _warm_up(self) -> None:
        self.logits(np.zeros((1, *self.sample_shape), dtype=self.dtype))


def _check_signature(manifest: ModelManifest, session: ort.InferenceSession, path: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    spec = manifest.input
    if spec.name not in inputs:
        raise ModelLoadError(f"{path}: the graph has no input named {spec.name!r}")
    if manifest.output.name not in outputs:
        raise ModelLoadError(f"{path}: the graph has no output named {manifest.output.name!r}")
    graph_input = inputs[spec.name]
    if _ORT_TO_NUMPY.get(graph_input.type) != spec.dtype:
        raise ModelLoadError(f"{path}: input dtype {graph_input.type} != manifest {spec.dtype}")
    graph_shape = graph_input.shape
    if len(graph_shape) != len(spec.shape) or any(
        isinstance(g, int) and g != m for g, m in zip(graph_shape[1:], spec.shape[1:], strict=True)
    ):
        raise ModelLoadError(f"{path}: input shape {graph_shape} != manifest {spec.shape}")
    out_shape = outputs[manifest.output.name].shape
    if len(out_shape) != 2 or (
        isinstance(out_shape[1], int) and out_shape[1] != len(manifest.labels)
    ):
        raise ModelLoadError(
            f"{path}: output shape {out_shape} does not match {len(manifest.labels)} labels"
        )
