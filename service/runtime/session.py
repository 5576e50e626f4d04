"""One ONNX classifier: an onnxruntime session plus its manifest. Returns clean
logits, which never leave the process: only the defense's output does.

Two kinds of graph are adapted here so the defense always sees logits of any batch:
a graph that outputs probabilities (a softmax inside) is read as log p, which is the
logits up to a constant per row (log softmax(z)_i = z_i - logsumexp(z)), and every
output of the defense is invariant to such a constant; a graph with a fixed batch
axis is run in chunks of that size, the last one padded with zero rows whose
outputs are dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from ..arrays import all_finite
from ..defense.calibrated import OutputCalibration
from ..errors import BadInput
from .inspect import InspectError, manifest_problems, open_session
from .manifest import ManifestError, ModelManifest, load_manifest

_SMALLEST_PROBABILITY = np.finfo(np.float32).tiny
"""Probabilities are clipped here before the log, so a zero becomes a very negative
logit rather than -inf."""


class ModelLoadError(RuntimeError):
    """A model directory cannot be served (missing, corrupt or inconsistent)."""


class OnnxClassifier:
    """A loaded model: validates batches against the manifest and runs them."""

    def __init__(self, manifest: ModelManifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self._session = session
        self._input_name = manifest.input.name
        self._output_names = [manifest.output.name]
        self._fixed_batch = manifest.input.fixed_batch
        self._outputs_probabilities = manifest.output.kind == "probabilities"
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
        try:
            session = open_session(path, intra_op_threads=intra_op_threads)
        except InspectError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        problems = manifest_problems(manifest, session)
        if problems:
            raise ModelLoadError(f"{path}: {problems[0]}")
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
        if batch.dtype == self.dtype:  # decoded in the model's dtype: nothing to cast
            cast = batch
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                cast = batch.astype(self.dtype)
        if cast.dtype.kind == "f" and not all_finite(cast):
            raise BadInput("inputs must be finite (no NaN or Inf, and within float32 range)")
        return cast

    def logits(self, batch: NDArray[np.generic]) -> NDArray[np.float32]:
        """Clean logits (n, k) for an already validated batch of any size."""
        size = self._fixed_batch
        if size is None or batch.shape[0] == size:
            out = self._run(batch)
        else:
            out = np.concatenate(
                [
                    self._run_padded(batch[i : i + size], size)
                    for i in range(0, batch.shape[0], size)
                ]
            )
        if self._outputs_probabilities:
            return np.log(np.maximum(out.astype(np.float32, copy=False), _SMALLEST_PROBABILITY))
        return out

    def _run(self, batch: NDArray[np.generic]) -> NDArray[np.float32]:
        (out,) = self._session.run(self._output_names, {self._input_name: batch})
        return np.asarray(out)

    def _run_padded(self, chunk: NDArray[np.generic], size: int) -> NDArray[np.float32]:
        rows = chunk.shape[0]
        if rows == size:
            return self._run(chunk)
        padding = np.zeros((size - rows, *chunk.shape[1:]), dtype=chunk.dtype)
        return self._run(np.concatenate([chunk, padding]))[:rows]

    def _warm_up(self) -> None:
        self.logits(np.zeros((1, *self.sample_shape), dtype=self.dtype))
