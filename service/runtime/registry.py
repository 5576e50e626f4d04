"""The set of models a server offers: every `<MODELS_DIR>/<name>/manifest.json`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import UnknownModel, echo
from .manifest import MANIFEST_FILE
from .session import ModelLoadError, OnnxClassifier


class ModelRegistry:
    """Models by name, loaded once at start-up. A broken model fails the start
    (with a message naming it) rather than being skipped silently."""

    def __init__(self, models: dict[str, OnnxClassifier]) -> None:
        self._models = dict(sorted(models.items()))

    @classmethod
    def load(cls, models_dir: Path, *, intra_op_threads: int = 1) -> ModelRegistry:
        if not models_dir.is_dir():
            raise ModelLoadError(f"models directory {models_dir} does not exist")
        models: dict[str, OnnxClassifier] = {}
        for manifest_path in sorted(models_dir.glob(f"*/{MANIFEST_FILE}")):
            model = OnnxClassifier.load(manifest_path.parent, intra_op_threads=intra_op_threads)
            if model.name in models:
                raise ModelLoadError(f"two models are named {model.name!r} in {models_dir}")
            models[model.name] = model
        if not models:
            raise ModelLoadError(f"no models (*/{MANIFEST_FILE}) found in {models_dir}")
        return cls(models)

    def get(self, name: str) -> OnnxClassifier:
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModel(f"unknown model {echo(name)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[OnnxClassifier]:
        return iter(self._models.values())

    def names(self) -> list[str]:
        return list(self._models)
