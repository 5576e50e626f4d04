"""Fixtures for fault, fuzz and rate-limit tests: apps with a hand-moved clock, and
PostgreSQL databases that can be made to go away and come back."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.app import build_services, create_app
from service.ratelimit import RateLimiter
from service.settings import Settings

from ..postgres_drop import drop_retrying

POSTGRES_URL_ENV = "DYNANOISE_TEST_POSTGRES_URL"


class FakeClock:
    """A clock the test moves by hand (no sleeping, no timed assertions)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def build_app(
    settings: Settings,
    *,
    clock: Callable[[], float] | None = None,
    limiter_clock: Callable[[], float] | None = None,
) -> FastAPI:
    """create_app with the services `build_services` builds, the tenant store's cache
    and the rate limiter on clocks the test controls when given."""
    services = build_services(settings)
    if clock is not None:
        services.store._clock = clock  # read at each cache lookup; build_services takes none
    if limiter_clock is not None:
        services.rate_limiter = RateLimiter(
            services.store.engine,
            burst_seconds=settings.rate_limit_burst_seconds,
            clock=limiter_clock,
        )
    return create_app(settings, services)


@dataclass
class PostgresDatabase:
    """A database of its own on the test server, and switches to take it away."""

    name: str
    url: str
    go_away: Callable[[], None]
    come_back: Callable[[], None]


@pytest.fixture
def postgres_database() -> Iterator[PostgresDatabase]:
    """A fresh PostgreSQL database; `go_away` refuses new connections and ends the open
    ones (what a server restart or a network cut looks like to the service)."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set (run scripts/start_postgres.sh)")
    admin = create_engine(
        make_url(url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    name = f"dynanoise_rel_{uuid.uuid4().hex[:12]}"

    def allow(allowed: bool) -> None:
        with admin.connect() as connection:
            connection.execute(
                text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
            )

    def go_away() -> None:
        allow(False)
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )

    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    database_url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield PostgresDatabase(name, database_url, go_away, lambda: allow(True))
    finally:

        def drop() -> None:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

        drop_retrying(drop)
        admin.dispose()
