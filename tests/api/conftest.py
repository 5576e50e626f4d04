"""Fixtures shared by the API tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.commands import serve as serve_command

from ..onnx_factory import write_linear_model


@pytest.fixture
def uvicorn_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Environment of a `dynanoise serve` on a test model, with no token, no metrics
    listener and no event-loop setting; uvicorn.run replaced by a stub that records the
    keyword arguments of each call (none: serve stopped before starting uvicorn)."""
    write_linear_model(tmp_path / "models", name="toy", n_features=4, n_classes=3, seed=0)
    for name in ("DYNANOISE_ADMIN_TOKEN", "DYNANOISE_METRICS_TOKEN", "DYNANOISE_EVENT_LOOP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DYNANOISE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DYNANOISE_DATABASE_URL", f"sqlite:///{tmp_path / 't.db'}")
    monkeypatch.setenv("DYNANOISE_METRICS_PORT", "0")
    monkeypatch.setenv("DYNANOISE_CREATE_DEMO_TENANT", "false")
    monkeypatch.chdir(tmp_path)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(serve_command.uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    return calls
