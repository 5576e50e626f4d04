"""Dropping a test database on PostgreSQL, robust to autovacuum."""

from __future__ import annotations

import time
from collections.abc import Callable

_RETRY_ON = "pg_signal_backend"


def drop_retrying(drop: Callable[[], None], *, attempts: int = 40, pause: float = 0.25) -> None:
    """Run ``drop`` (a `DROP DATABASE ... WITH (FORCE)`), again while it fails only
    because an autovacuum worker, a superuser process that FORCE may not terminate for
    a non-superuser role, has just started on the database (it ends within moments)."""
    for attempt in range(attempts):
        try:
            drop()
            return
        except Exception as exc:
            if _RETRY_ON not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(pause)
