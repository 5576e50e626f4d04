"""ONNX models: manifests, sessions and the registry. Knows nothing of HTTP."""

from .manifest import ManifestError, ModelManifest, TensorSpec, load_manifest
from .registry import ModelRegistry
from .session import ModelLoadError, OnnxClassifier

__all__ = [
    "ManifestError",
    "ModelLoadError",
    "ModelManifest",
    "ModelRegistry",
    "OnnxClassifier",
    "TensorSpec",
    "load_manifest",
]
