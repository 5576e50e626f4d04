"""A SQLite file deleted, replaced or overwritten under a running server is noticed:
readiness fails, writes answer 503 (never 201 into a file no one will open again, never
500), and a start next to the remains of a lost database seeds nothing into it."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.commands.serve import ensure_demo_tenant
from service.settings import Settings
from service.tenants import StoreUnavailable, TenantStore

from ..conftest import ADMIN_TOKEN, ROW_TOY, bearer

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PREDICT = "/v1/models/toy/predict"
BODY = {"instances": [ROW_TOY]}


def _database_path(settings: Settings) -> Path:
    return Path(settings.database_url.removeprefix("sqlite:///"))


def _remove(path: Path) -> None:
    for file in path.parent.glob(path.name + "*"):  # rm tenants.db*
        file.unlink()


def _replace(path: Path) -> None:
    copy = path.with_name("copy.db")
    shutil.copy(path, copy)
    copy.replace(path)  # same content, another file


def _overwrite_header(path: Path) -> None:
    # Checkpoint first: while page 1 lives in the WAL, SQLite reads it from there and
    # an overwritten file header is neither visible nor lasting (a checkpoint writes
    # page 1 back over it).
    with closing(sqlite3.connect(path)) as checkpoint:
        checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as file:
        file.write(b"\xff" * 100)


@pytest.mark.parametrize(
    "lose", [_remove, _replace, _overwrite_header], ids=["removed", "replaced", "overwritten"]
)
def test_a_lost_database_file_fails_readiness_and_writes_answer_503(
    settings: Settings, lose: object
) -> None:
    path = _database_path(settings)
    with TestClient(create_app(settings)) as client:
        key = client.post("/admin/tenants", json={"name": "clinic"}, headers=ADMIN).json()[
            "api_key"
        ]
        assert client.get("/v2/health/ready").status_code == 200

        lose(path)  # type: ignore[operator]

        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/health/live").status_code == 200
        for _ in range(5):  # on pooled connections and new ones alike
            created = client.post("/admin/tenants", json={"name": "late"}, headers=ADMIN)
            assert created.status_code == 503, created.text
            assert created.json()["error"]["code"] == "unavailable"
            assert client.get("/admin/tenants", headers=ADMIN).status_code in {200, 503}
            assert client.post(PREDICT, json=BODY, headers=bearer(key)).status_code in {200, 503}
        if lose is _remove:
            # Nothing recreated an empty file at the path for later reads to split onto.
            assert not path.exists()


def test_a_corrupt_file_answers_503_with_a_clear_error_never_500(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    path = _database_path(settings)
    app = create_app(settings)
    with TestClient(app) as client:
        key = client.post("/admin/tenants", json={"name": "clinic"}, headers=ADMIN).json()[
            "api_key"
        ]
        with closing(sqlite3.connect(path)) as checkpoint:  # header in the file, not the WAL
            checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _overwrite_header(path)
        app.state.services.store.engine.dispose()  # every connection opens the file anew
        with caplog.at_level(logging.WARNING):
            for request in (
                lambda: client.post(PREDICT, json=BODY, headers=bearer(key)),
                lambda: client.get("/admin/tenants", headers=ADMIN),
                lambda: client.post("/admin/tenants", json={"name": "late"}, headers=ADMIN),
                lambda: client.get("/v2/health/ready"),
            ):
                assert request().status_code == 503
        reasons = " ".join(record.getMessage() for record in caplog.records)
        assert "not a database" in reasons or "not a SQLite database" in reasons
        assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_write_after_the_file_is_removed_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "tenants.db"
    store = TenantStore(f"sqlite:///{path}")
    try:
        store.migrate()
        store.create("clinic")
        _remove(path)
        with pytest.raises(StoreUnavailable):
            store.create("late")
        with pytest.raises(StoreUnavailable):
            store.rotate_key("clinic")
        assert store.ping() is False
        assert not path.exists()
    finally:
        store.close()


@pytest.mark.parametrize("leftover", ["-wal", "-shm"])
def test_a_start_next_to_a_lost_database_creates_no_demo_tenant(
    tmp_path: Path, leftover: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tenants.db"
    path.with_name(path.name + leftover).write_bytes(b"\0" * 32)  # what the loss left
    key_file = tmp_path / "demo_api_key"
    store = TenantStore(f"sqlite:///{path}")
    try:
        store.migrate()
        with caplog.at_level(logging.WARNING):
            assert ensure_demo_tenant(store, key_file) is None
        assert store.list() == []
        assert not key_file.exists()
        lines = [record.getMessage() for record in caplog.records]
        assert len(lines) == 1
        assert "missing" in lines[0] and leftover in lines[0] and "demo" in lines[0]
    finally:
        store.close()


def test_a_start_on_a_fresh_directory_still_creates_the_demo_tenant(tmp_path: Path) -> None:
    store = TenantStore(f"sqlite:///{tmp_path / 'tenants.db'}")
    try:
        store.migrate()
        assert ensure_demo_tenant(store, tmp_path / "demo_api_key") is not None
        assert [tenant.name for tenant in store.list()] == ["demo"]
    finally:
        store.close()
