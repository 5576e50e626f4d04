"""The models a server offers, read from the model repository `<MODELS_DIR>/<dir>/`.

Every model is loaded at start (a broken one fails the start). Afterwards the set
changes without a restart: `load_model` / `unload_model` (the repository API) act at
once, and `poll` (every process, on a timer: `RepositoryPoller`) follows changes to
the directory, so every worker and replica converges on what the directory holds.
`unload_model` leaves a `disabled` marker in the model's directory that pollers and
restarts respect; `load_model` removes it.

Lookups read an immutable mapping without a lock; a change builds a new mapping and
swaps it in under a lock. A request keeps the `OnnxClassifier` it looked up, so it
finishes on that version while a newer one replaces it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from ..errors import InvalidModel, RepositoryUnwritable, UnknownModel, echo
from .manifest import MANIFEST_FILE
from .session import ModelLoadError, OnnxClassifier

logger = logging.getLogger("dynanoise.models")

DISABLED_MARKER = "disabled"
"""A file of this name in a model's directory keeps the model unloaded (written by
`unload_model`, removed by `load_model`)."""

# The manifest's name pattern: also keeps a requested name from leaving the directory.
_MODEL_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")

Fingerprint = tuple[tuple[str, int, int, int], ...]
"""(file name, inode, mtime_ns, size) of each file directly in a model's directory:
a replaced manifest or model file (in place or by rename) changes it."""


class ModelState(StrEnum):
    """A repository entry's state, as the Open Inference Protocol names it."""

    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One model of the repository index; ``reason`` says why it is not (or not in its
    latest form) served, empty when nothing is wrong."""

    name: str
    version: str | None
    state: ModelState
    reason: str


@dataclass(frozen=True, slots=True)
class _Seen:
    """What this process last made of a model directory."""

    fingerprint: Fingerprint
    reason: str = ""  # why its current files are not served ("" when they are)


class ModelRegistry:
    """Models by name; see the module docstring for how the set changes."""

    def __init__(
        self,
        models: Mapping[str, OnnxClassifier],
        *,
        models_dir: Path | None = None,
        sources: Mapping[str, Path] | None = None,
        intra_op_threads: int = 1,
    ) -> None:
        self._models: Mapping[str, OnnxClassifier] = MappingProxyType(dict(sorted(models.items())))
        self._models_dir = models_dir
        self._intra_op_threads = intra_op_threads
        self._sources: dict[str, Path] = dict(sources or {})  # name -> its directory
        self._seen: dict[Path, _Seen] = {}
        self._lock = threading.Lock()  # serialises changes, never held by lookups
        for directory in self._sources.values():
            self._seen[directory] = _Seen(_fingerprint(directory))

    @classmethod
    def load(cls, models_dir: Path, *, intra_op_threads: int = 1) -> ModelRegistry:
        """Every model of ``models_dir`` except those marked disabled; raises
        ModelLoadError on a broken one or when the directory holds no model at all."""
        if not models_dir.is_dir():
            raise ModelLoadError(f"models directory {models_dir} does not exist")
        models: dict[str, OnnxClassifier] = {}
        sources: dict[str, Path] = {}
        directories = _model_directories(models_dir)
        if not directories:
            raise ModelLoadError(f"no models (*/{MANIFEST_FILE}) found in {models_dir}")
        disabled = []
        for directory in directories:
            if (directory / DISABLED_MARKER).exists():
                disabled.append(directory)
                continue
            model = OnnxClassifier.load(directory, intra_op_threads=intra_op_threads)
            if model.name in models:
                raise ModelLoadError(f"two models are named {model.name!r} in {models_dir}")
            models[model.name] = model
            sources[model.name] = directory
        registry = cls(
            models, models_dir=models_dir, sources=sources, intra_op_threads=intra_op_threads
        )
        for directory in disabled:
            logger.info("model directory %s is marked %s: not served", directory, DISABLED_MARKER)
            registry._seen[directory] = _Seen(_fingerprint(directory), "unloaded")
        return registry

    # Lookups: lock-free reads of the current mapping.

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

    # Changes: each under the lock, each ending in one swap of the mapping.

    def load_model(self, name: str) -> OnnxClassifier:
        """(Re)load ``name`` from its directory and serve it. The new version is fully
        loaded and checked before it replaces the old one; if it cannot be, InvalidModel
        (one line) is raised and the old version, if any, keeps serving."""
        with self._lock:
            directory = self._directory_of(name)
            _remove_marker(directory)
            fingerprint = _fingerprint(directory)
            try:
                model = self._load_checked(directory, expected_name=name)
            except ModelLoadError as exc:
                reason = _one_line(exc)
                self._seen[directory] = _Seen(fingerprint, reason)
                raise InvalidModel(reason) from exc
            self._put(model, directory)
            self._seen[directory] = _Seen(fingerprint)
        logger.info("model %s version %s loaded from %s", name, model.manifest.version, directory)
        return model

    def unload_model(self, name: str) -> None:
        """Stop serving ``name`` and mark its directory disabled, so that other
        processes (and restarts) follow. Requests that hold the model finish on it."""
        with self._lock:
            if name not in self._models:
                raise UnknownModel(f"unknown model {echo(name)}")
            directory = self._sources[name]
            if directory.is_dir():
                try:
                    (directory / DISABLED_MARKER).write_text(
                        "unloaded through the repository API\n"
                    )
                except OSError as exc:
                    raise RepositoryUnwritable(
                        f"cannot mark {name!r} unloaded in {directory} ({exc.strerror}): other "
                        "processes would keep serving it; remove its directory instead"
                    ) from exc
                self._seen[directory] = _Seen(_fingerprint(directory), "unloaded")
            self._drop(name)
        logger.info("model %s unloaded", name)

    def poll(self) -> None:
        """Follow the directory: load new or changed models, unload removed or disabled
        ones. A model whose new files cannot be loaded keeps its old version (or stays
        out), with one WARNING per change."""
        if self._models_dir is None:
            return
        with self._lock:
            on_disk = set(_model_directories(self._models_dir))
            for directory in sorted(on_disk | set(self._seen) | set(self._sources.values())):
                fingerprint = _fingerprint(directory) if directory in on_disk else None
                seen = self._seen.get(directory)
                if seen is None or fingerprint != seen.fingerprint:
                    self._follow(directory, fingerprint)

    def index(self) -> list[RepositoryEntry]:
        """Every model of the repository: those served (READY) and every other model
        directory (UNAVAILABLE, with the reason), by name."""
        with self._lock:
            models, sources, seen = self._models, dict(self._sources), dict(self._seen)
        entries: dict[str, RepositoryEntry] = {}
        for name, model in models.items():
            record = seen.get(sources.get(name, Path()))
            reason = (
                f"serving version {model.manifest.version}: the files now in its directory "
                f"cannot be loaded: {record.reason}"
                if record is not None and record.reason
                else ""
            )
            entries[name] = RepositoryEntry(name, model.manifest.version, ModelState.READY, reason)
        served = set(sources.values())
        directories = _model_directories(self._models_dir) if self._models_dir else []
        for directory in directories:
            if directory in served or directory.name in entries:
                continue
            record = seen.get(directory)
            reason = record.reason if record is not None and record.reason else "not loaded"
            entries[directory.name] = RepositoryEntry(
                directory.name, None, ModelState.UNAVAILABLE, reason
            )
        return [entries[name] for name in sorted(entries)]

    # Helpers; all run under the lock.

    def _follow(self, directory: Path, fingerprint: Fingerprint | None) -> None:
        """Bring what this process serves from ``directory`` in line with its files."""
        served = next((n for n, d in self._sources.items() if d == directory), None)
        if fingerprint is None:  # the directory or its manifest is gone
            self._seen.pop(directory, None)
            if served is not None:
                self._drop(served)
                logger.info("model %s unloaded: %s no longer holds it", served, directory)
            return
        if (directory / DISABLED_MARKER).exists():
            self._seen[directory] = _Seen(fingerprint, "unloaded")
            if served is not None:
                self._drop(served)
                logger.info("model %s unloaded: %s is marked disabled", served, directory)
            return
        try:
            model = self._load_checked(directory, expected_name=None)
        except ModelLoadError as exc:
            reason = _one_line(exc)
            self._seen[directory] = _Seen(fingerprint, reason)
            keeps = (
                "not served"
                if served is None
                else f"keeping version {self._models[served].manifest.version} of {served}"
            )
            logger.warning("model directory %s cannot be loaded (%s): %s", directory, keeps, reason)
            return
        if served is not None and served != model.name:
            self._drop(served)  # the manifest renamed the model
        self._put(model, directory)
        self._seen[directory] = _Seen(fingerprint)
        logger.info(
            "model %s version %s loaded from %s", model.name, model.manifest.version, directory
        )

    def _load_checked(self, directory: Path, *, expected_name: str | None) -> OnnxClassifier:
        """Load and check the model of ``directory``; ModelLoadError says why not."""
        try:
            model = OnnxClassifier.load(directory, intra_op_threads=self._intra_op_threads)
        except ModelLoadError:
            raise
        except OSError as exc:  # unreadable files: one line, as for any broken model
            raise ModelLoadError(f"{directory}: {exc.strerror or exc}") from exc
        except Exception as exc:
            # onnxruntime raises types of its own (not RuntimeError) when a graph that
            # loaded fails its warm-up run; a running server refuses the model instead.
            raise ModelLoadError(f"{directory}: {type(exc).__name__}: {exc}") from exc
        if expected_name is not None and model.name != expected_name:
            raise ModelLoadError(
                f"{directory / MANIFEST_FILE} names the model {model.name!r}, not {expected_name!r}"
            )
        owner = self._sources.get(model.name)
        if owner is not None and owner != directory:
            raise ModelLoadError(
                f"{directory}: a model named {model.name!r} is already served from {owner}"
            )
        return model

    def _directory_of(self, name: str) -> Path:
        """Where ``name`` is loaded from: the directory it is served from, else
        `<models_dir>/<name>`, else the directory whose manifest names it."""
        if not _MODEL_NAME.match(name):
            raise UnknownModel(f"unknown model {echo(name)}: not a valid model name")
        if name in self._sources:
            return self._sources[name]
        if self._models_dir is None:
            raise UnknownModel(f"unknown model {echo(name)}: this server has no model repository")
        directory = self._models_dir / name
        if (directory / MANIFEST_FILE).is_file():
            return directory
        # Relative to the repository: an error body never shows the server's paths.
        raise UnknownModel(
            f"unknown model {echo(name)}: the model repository has no {name}/{MANIFEST_FILE}"
        )

    def _put(self, model: OnnxClassifier, directory: Path) -> None:
        self._models = MappingProxyType(dict(sorted({**self._models, model.name: model}.items())))
        self._sources[model.name] = directory

    def _drop(self, name: str) -> None:
        self._models = MappingProxyType({n: m for n, m in self._models.items() if n != name})
        self._sources.pop(name, None)


class RepositoryPoller:
    """Calls ``registry.poll()`` every ``interval_seconds`` on a daemon thread, so that
    every process follows the model directory; ``stop`` ends it."""

    def __init__(self, registry: ModelRegistry, interval_seconds: float) -> None:
        self._registry = registry
        self._interval = interval_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(5.0, self._interval))

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._registry.poll()
            except Exception:
                # A background loop that dies would silently stop following the
                # directory; log the fault with its traceback and try again next time.
                logger.exception("polling the model directory failed")


def _model_directories(models_dir: Path) -> list[Path]:
    """The directories of ``models_dir`` that hold a manifest."""
    return sorted(path.parent for path in models_dir.glob(f"*/{MANIFEST_FILE}"))


def _fingerprint(directory: Path) -> Fingerprint:
    files = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file():
                    stat = entry.stat()
                    files.append((entry.name, stat.st_ino, stat.st_mtime_ns, stat.st_size))
    except OSError:  # removed (or unreadable) while being looked at: the next poll sees it
        return ()
    return tuple(sorted(files))


def _remove_marker(directory: Path) -> None:
    try:
        (directory / DISABLED_MARKER).unlink(missing_ok=True)
    except OSError as exc:
        raise RepositoryUnwritable(
            f"cannot remove the {DISABLED_MARKER} marker from {directory} ({exc.strerror}): "
            "other processes would keep the model unloaded"
        ) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
