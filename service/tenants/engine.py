"""Engine construction: SQLite by default, PostgreSQL through psycopg 3."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import StaticPool

# Execution option marking connections that will write (see `for_writes`).
_WRITE_OPTION = "dynanoise_writes"


def normalize_url(database_url: str) -> URL:
    """Parse a database URL; plain `postgresql://` (or `postgres://`) gets psycopg 3."""
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def make_engine(database_url: str) -> Engine:
    """An engine for `database_url`, safe to share between threads.

    For a SQLite file the parent directory is created; an in-memory SQLite
    database is one shared connection, or each thread would see its own.
    """
    url = normalize_url(database_url)
    if url.get_backend_name() != "sqlite":
        # pre_ping: a restarted server must not hand us dead pooled connections.
        return create_engine(url, pool_pre_ping=True)
    connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": 30}
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool)
    else:
        if not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args=connect_args)
        _use_write_ahead_log(engine)
    _begin_sqlite_explicitly(engine)
    return engine


def access_guard(engine: Engine) -> AbstractContextManager[Any]:
    """A lock to hold around database work when the engine has one connection.

    An in-memory SQLite database lives in a single shared connection, which
    two threads must not use at once; file and server databases need no lock.
    """
    return threading.RLock() if isinstance(engine.pool, StaticPool) else nullcontext()


def for_writes(engine: Engine) -> Engine:
    """The same engine (shared pool), its transactions marked as writers.

    On SQLite they open with BEGIN IMMEDIATE: they take the write lock up
    front and wait for it (busy timeout). Two deferred transactions that
    both read and then write would otherwise fail at once with "database is
    locked", since SQLite refuses to wait where waiting could deadlock.
    """
    return engine.execution_options(**{_WRITE_OPTION: True})


def _use_write_ahead_log(engine: Engine) -> None:
    # WAL lets readers run beside a writer and, with synchronous=NORMAL, a commit
    # costs no fsync (bench/README.md, "Micro-timings behind the code").
    # A crash can lose the last commits but never corrupts the file.
    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def _begin_sqlite_explicitly(engine: Engine) -> None:
    # pysqlite's own implicit BEGIN cannot be told to be IMMEDIATE, and it
    # commits around DDL; switch it off and emit BEGIN ourselves (the recipe
    # from the SQLAlchemy SQLite dialect docs).
    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        writes = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")
