"""`dynanoise serve` runs uvicorn on the event loop `DYNANOISE_EVENT_LOOP` names:
asyncio by default (it reads connections in arrival order under saturation; uvloop
leaves some unread for hundreds of milliseconds, measured in bench/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service import cli
from service.commands import serve as serve_command
from service.settings import Settings

from ..onnx_factory import write_linear_model


@pytest.fixture
def uvicorn_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Environment of a `dynanoise serve` on a test model; uvicorn.run replaced by a
    stub that records its keyword arguments."""
    write_linear_model(tmp_path / "models", name="toy", n_features=4, n_classes=3, seed=0)
    for name in ("DYNANOISE_ADMIN_TOKEN", "DYNANOISE_METRICS_TOKEN", "DYNANOISE_EVENT_LOOP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DYNANOISE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DYNANOISE_DATABASE_URL", f"sqlite:///{tmp_path / 't.db'}")
    monkeypatch.setenv("DYNANOISE_METRICS_PORT", "0")
    monkeypatch.setenv("DYNANOISE_CREATE_DEMO_TENANT", "false")
    monkeypatch.chdir(tmp_path)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(serve_command.uvicorn, "run", lambda *a, **kw: calls.append(kw))
    return calls


def test_serve_runs_uvicorn_on_asyncio_by_default(uvicorn_calls: list[dict[str, Any]]) -> None:
    assert cli.main(["serve"]) == 0
    assert [call["loop"] for call in uvicorn_calls] == ["asyncio"]


def test_uvloop_is_chosen_by_setting(
    uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYNANOISE_EVENT_LOOP", "uvloop")
    assert cli.main(["serve"]) == 0
    assert [call["loop"] for call in uvicorn_calls] == ["uvloop"]


def test_an_unknown_event_loop_is_refused() -> None:
    with pytest.raises(ValidationError, match="event_loop"):
        Settings(event_loop="trio")  # type: ignore[arg-type]
