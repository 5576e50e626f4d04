"""Alembic migrations of the tenant store; the config is built in code."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).resolve().parent


def build_alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for these migrations, no alembic.ini needed.

    Online runs pass an open `connection` (env.py uses it as is); `url` serves
    offline SQL generation (`alembic upgrade --sql`).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation would choke on "%" in URL-encoded passwords.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config
