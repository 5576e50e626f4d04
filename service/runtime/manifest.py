"""Model manifests: the JSON file beside each .onnx that says what the model takes,
and, optionally, the held-out answer tables of the lossy output modes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..defense.calibrated import OutputCalibration

MANIFEST_FILE = "manifest.json"

_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_NUMBER_LIST = re.compile(rf"\[\s*({_NUMBER}(?:\s*,\s*{_NUMBER})*)\s*\]")

# Tensor dtypes a manifest may declare, with their Open Inference Protocol names.
DTYPES: dict[str, str] = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


class ManifestError(ValueError):
    """A manifest is missing, unreadable or inconsistent with its model file."""


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int] = Field(description="Batch dimension first, as -1.")
    dtype: Literal["float32", "float64", "int64", "int32"] = "float32"
    fixed_batch: int | None = Field(
        None,
        gt=0,
        description="The graph's batch size when its batch axis is fixed (a torch export "
        "without dynamic_axes: 1); batches are then run in chunks of this size.",
    )

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, shape: list[int]) -> list[int]:
        if len(shape) < 2 or shape[0] != -1 or any(d <= 0 for d in shape[1:]):
            raise ValueError("shape must be [-1, d1, ...] with positive sample dimensions")
        return shape

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])


OutputKind = Literal["logits", "probabilities"]


class OutputSpec(BaseModel):
    name: str = "logits"
    kind: OutputKind = Field(
        "logits",
        description="What the graph outputs: raw logits, or probabilities (a softmax "
        "inside), which are served as their log: the logits up to a constant per row.",
    )


class ModelManifest(BaseModel):
    """What the serving runtime needs; the rest (training, split, metrics) rides along."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
    version: str = "1"
    file: str = "model.onnx"
    input: TensorSpec
    output: OutputSpec = OutputSpec(name="logits", kind="logits")
    labels: list[str] = Field(min_length=2)
    description: str = ""
    calibration: dict[str, Any] | None = Field(
        None,
        description="OutputCalibration.as_dict() of held-out rows (written by `dynanoise "
        "models calibrate-outputs`); the calibrated_label and coarse modes need it.",
    )
    _output_calibration: OutputCalibration | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _parse_calibration(self) -> ModelManifest:
        # Parsed once, here: a block that cannot answer fails the load, not a request.
        if self.calibration is None:
            return self
        try:
            calibration = OutputCalibration.from_dict(self.calibration)
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise _invalid_calibration(detail) from None
        if calibration.n_classes != len(self.labels):
            raise _invalid_calibration(
                f"n_classes {calibration.n_classes} != {len(self.labels)} labels"
            )
        self._output_calibration = calibration
        return self

    @property
    def output_calibration(self) -> OutputCalibration | None:
        """The parsed ``calibration`` block (None when the manifest has none)."""
        return self._output_calibration

    @property
    def model_id(self) -> str:
        """Stable identity of this model version (keys the sticky noise)."""
        return f"{self.name}@{self.version}"


def load_manifest(model_dir: Path) -> ModelManifest:
    path = model_dir / MANIFEST_FILE
    try:
        return ModelManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: manifest not found") from exc
    except ValidationError as exc:
        # One line naming the fields, not pydantic's multi-line report.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        )
        raise ManifestError(f"{path}: invalid manifest: {problems}") from None


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as model_dir/manifest.json: indented, keys in insertion order,
    each innermost list of numbers (a shape, a table's row) on one line."""
    text = json.dumps(manifest, indent=1)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(re.split(r"\s*,\s*", m.group(1))) + "]", text)
    path = model_dir / MANIFEST_FILE
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _invalid_calibration(detail: str) -> PydanticCustomError:
    # A custom error reads "calibration: ..." (a ValueError would add "Value error, ").
    return PydanticCustomError("invalid_calibration", "calibration: {detail}", {"detail": detail})
