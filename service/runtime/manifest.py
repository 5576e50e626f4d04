"""Model manifests: the JSON file beside each .onnx that says what the model takes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MANIFEST_FILE = "manifest.json"

# Tensor dtypes a manifest may declare, with their Open Inference Protocol names.
DTYPES: dict[str, str] = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


class ManifestError(ValueError):
    """A manifest is missing, unreadable or inconsistent with its model file."""


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int] = Field(description="Batch dimension first, as -1.")
    dtype: Literal["float32", "float64", "int64", "int32"] = "float32"

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, shape: list[int]) -> list[int]:
        if len(shape) < 2 or shape[0] != -1 or any(d <= 0 for d in shape[1:]):
            raise ValueError("shape must be [-1, d1, ...] with positive sample dimensions")
        return shape

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])


class OutputSpec(BaseModel):
    name: str = "logits"


class ModelManifest(BaseModel):
    """What the serving runtime needs; the rest (training, split, metrics) rides along."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
    version: str = "1"
    file: str = "model.onnx"
    input: TensorSpec
    output: OutputSpec = OutputSpec()
    labels: list[str] = Field(min_length=2)
    description: str = ""

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
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ManifestError(f"{path}: invalid manifest: {problems}") from None
