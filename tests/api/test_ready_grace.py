"""Readiness and the stale-tenant grace: `allow_stale` keeps a process ready through a
database blip (known tenants are served from the cache), never past the grace, and
never on a lost SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.tenants import StoreUnavailable

READY = "/v2/health/ready"
STALE_OK = "/v2/health/ready?allow_stale=true"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _unreachable(*_: object, **__: object) -> object:
    raise StoreUnavailable("database unreachable (simulated)")


def test_a_blip_within_the_grace_is_ready_only_when_stale_answers_are_allowed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    grace = settings.stale_tenant_grace_seconds
    with TestClient(create_app(settings)) as client:
        store = client.app.state.services.store  # type: ignore[attr-defined]
        clock = Clock()
        monkeypatch.setattr(store, "_clock", clock)
        assert client.get(READY).status_code == 200
        assert client.get(STALE_OK).status_code == 200

        monkeypatch.setattr(store, "_read", _unreachable)
        clock.now += grace / 2
        assert client.get(READY).status_code == 503
        assert client.get(STALE_OK).status_code == 200

        clock.now += grace  # past the grace since the last good answer
        assert client.get(STALE_OK).status_code == 503


def test_allow_stale_is_not_ready_before_the_store_ever_answered(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(settings)) as client:
        store = client.app.state.services.store  # type: ignore[attr-defined]
        monkeypatch.setattr(store, "_last_ping_ok", None)
        monkeypatch.setattr(store, "_read", _unreachable)
        assert client.get(STALE_OK).status_code == 503


def test_a_lost_sqlite_file_is_never_ready(settings: Settings) -> None:
    path = Path(settings.database_url.removeprefix("sqlite:///"))
    with TestClient(create_app(settings)) as client:
        assert client.get(STALE_OK).status_code == 200
        for file in path.parent.glob(path.name + "*"):
            file.unlink()
        assert client.get(STALE_OK).status_code == 503
