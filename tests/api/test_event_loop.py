"""`dynanoise serve` runs uvicorn on the event loop `DYNANOISE_EVENT_LOOP` names:
asyncio by default (it reads connections in arrival order under saturation; uvloop
leaves some unread for hundreds of milliseconds, measured in bench/README.md)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service import cli
from service.settings import Settings


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
