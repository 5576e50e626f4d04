"""Fixtures for the tenant store: the same tests on SQLite and PostgreSQL.

PostgreSQL runs only when DYNANOISE_TEST_POSTGRES_URL is set (see
scripts/start_postgres.sh); each test gets a database of its own, created
and dropped here, so the role needs CREATEDB.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from service.tenants import TenantStore

from ..postgres_drop import drop_retrying

POSTGRES_URL_ENV = "DYNANOISE_TEST_POSTGRES_URL"


@dataclass
class TestDatabase:
    """A fresh, empty database for one test, and a way to take it away."""

    __test__ = False  # not a test class, despite the name

    kind: str
    url: str
    make_unreachable: Callable[[], None]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An autocommit engine on the database named by the env URL (to CREATE DATABASE)."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set (run scripts/start_postgres.sh)")
    engine = create_engine(
        make_url(url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    yield engine
    engine.dispose()


def _sqlite_database(tmp_path: Path, opened: list[TenantStore]) -> Iterator[TestDatabase]:
    directory = tmp_path / "db"

    def make_unreachable() -> None:
        for store in opened:
            store.engine.dispose()
        shutil.move(directory, tmp_path / "gone")

    yield TestDatabase("sqlite", f"sqlite:///{directory / 'tenants.db'}", make_unreachable)


def _postgres_database(admin: Engine, opened: list[TenantStore]) -> Iterator[TestDatabase]:
    name = f"dynanoise_t_{uuid.uuid4().hex[:16]}"

    def drop() -> None:
        def once() -> None:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

        drop_retrying(once)

    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield TestDatabase("postgres", url, drop)
    finally:
        for store in opened:
            store.close()
        drop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(
    request: pytest.FixtureRequest, tmp_path: Path, opened_stores: list[TenantStore]
) -> Iterator[TestDatabase]:
    """An empty database of each kind."""
    if request.param == "sqlite":
        yield from _sqlite_database(tmp_path, opened_stores)
    else:
        admin = request.getfixturevalue("postgres_admin")
        yield from _postgres_database(admin, opened_stores)


@pytest.fixture
def database_url(database: TestDatabase) -> str:
    return database.url


@pytest.fixture
def opened_stores() -> Iterator[list[TenantStore]]:
    stores: list[TenantStore] = []
    yield stores
    for store in stores:
        store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(
    database_url: str, clock: FakeClock, opened_stores: list[TenantStore]
) -> Callable[..., TenantStore]:
    """Open a store on the test database (migrated); closed after the test."""

    def make(**options: object) -> TenantStore:
        options.setdefault("clock", clock)
        store = TenantStore(database_url, **options)  # type: ignore[arg-type]
        opened_stores.append(store)
        store.migrate()
        return store

    return make


@pytest.fixture
def store(make_store: Callable[..., TenantStore]) -> TenantStore:
    return make_store()
