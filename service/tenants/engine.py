"""Engine construction (SQLite by default, PostgreSQL through psycopg 3) and the bounds
that keep a slow, hung, lost or broken database from taking the process down with it."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool, StaticPool

from service.tenants.domain import StoreUnavailable

# Execution option marking connections that will write (see `for_writes`).
_WRITE_OPTION = "dynanoise_writes"
_T = TypeVar("_T")
# How much longer than the database's own timeouts a caller waits: a statement that
# the database ends (a lock wait, a slow query) then fails cleanly, rolled back, and
# only a database that answers nothing at all is given up on from this side.
_HUNG_GRACE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """How long and how much database work may take before it counts as unavailable.

    ``call_timeout_seconds`` is PostgreSQL's statement and lock timeout and SQLite's
    busy timeout; a caller gives up on a store call a second after it (a hung server
    ends nothing by itself);
    ``max_concurrent_calls`` store calls run at once (the connection pool holds twice
    that, the rest for the rate limiter), and a call waits ``queue_timeout_seconds`` at
    most for a slot or a pooled connection.
    """

    call_timeout_seconds: float = 5.0
    connect_timeout_seconds: float = 5.0
    max_concurrent_calls: int = 8
    queue_timeout_seconds: float = 0.5

    def __post_init__(self) -> None:
        if min(self.call_timeout_seconds, self.connect_timeout_seconds) <= 0:
            raise ValueError("store timeouts must be > 0")
        if self.max_concurrent_calls < 1 or self.queue_timeout_seconds < 0:
            raise ValueError("max_concurrent_calls must be >= 1, queue_timeout_seconds >= 0")


def normalize_url(database_url: str) -> URL:
    """Parse a database URL; plain `postgresql://` (or `postgres://`) gets psycopg 3."""
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def make_engine(
    database_url: str,
    limits: StoreLimits | None = None,
    *,
    database_file: DatabaseFile | None = None,
) -> Engine:
    """An engine for `database_url`, safe to share between threads, within ``limits``.

    For a SQLite file the parent directory is created, and ``database_file`` (see
    `DatabaseFile.of`) is watched; an in-memory SQLite database is one shared
    connection, or each thread would see its own.
    """
    limits = limits if limits is not None else StoreLimits()
    url = normalize_url(database_url)
    pool: dict[str, Any] = {
        "poolclass": _QueuePool,
        "pool_size": limits.max_concurrent_calls,
        "max_overflow": limits.max_concurrent_calls,
        "pool_timeout": limits.queue_timeout_seconds,
    }
    if url.get_backend_name() != "sqlite":
        # pre_ping: a restarted server must not hand us dead pooled connections.
        return create_engine(
            url, pool_pre_ping=True, connect_args=_postgres_timeouts(url, limits), **pool
        )
    connect_args: dict[str, Any] = {
        "check_same_thread": False,
        "timeout": limits.call_timeout_seconds,
    }
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool)
    else:
        if not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args=connect_args, **pool)
        _use_write_ahead_log(engine)
        if database_file is not None:
            database_file.watch(engine)
    _begin_sqlite_explicitly(engine, database_file)
    _broken_file_is_unavailable(engine)
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


class CallGate:
    """Runs database calls on threads of their own, at most ``max_concurrent_calls`` at
    once, and waits at most a second longer than ``call_timeout_seconds`` for each.

    A database that stops answering (a SIGSTOPped server answers no timeout of its
    own) then holds at most that many threads and connections; its callers get
    StoreUnavailable instead of waiting with it. A call that overran keeps its slot
    until the database answers it.
    """

    def __init__(self, limits: StoreLimits) -> None:
        self._limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_concurrent_calls)

    def submit(self, work: Callable[[], _T]) -> Future[_T]:
        """Start ``work``; raises StoreUnavailable when no slot frees up in time."""
        if not self._slots.acquire(timeout=self._limits.queue_timeout_seconds):
            raise StoreUnavailable(
                f"tenant database busy: {self._limits.max_concurrent_calls} calls in flight"
            )
        future: Future[_T] = Future()

        def run() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)
            finally:
                self._slots.release()

        threading.Thread(target=run, name="dynanoise-store-call", daemon=True).start()
        return future

    def wait(self, future: Future[_T]) -> _T:
        """The result of a submitted call, within the call timeout (and its grace)."""
        timeout = self._limits.call_timeout_seconds + _HUNG_GRACE_SECONDS
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            raise StoreUnavailable(f"tenant database did not answer within {timeout:g} s") from None

    def call(self, work: Callable[[], _T]) -> _T:
        """``work()``, bounded (see the class)."""
        return self.wait(self.submit(work))


class OutageLog:
    """Logs an outage of the tenant database without flooding: one warning when calls
    start failing, then at most one line per ``interval_seconds`` with the number of
    calls that failed meanwhile, and one when the database answers again."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last_line = 0.0
        self._failed = 0  # during this outage
        self._unreported = 0  # since the last line

    def failed(self, error: BaseException | str) -> None:
        """A call failed because the database is unavailable."""
        now = self._clock()
        with self._lock:
            self._failed += 1
            if self._since is None:
                self._since, self._last_line, self._unreported = now, now, 0
                first = True
            elif now - self._last_line >= self._interval:
                first, unreported = False, self._unreported + 1
                self._last_line, self._unreported = now, 0
            else:
                self._unreported += 1
                return
            elapsed = now - self._since
        if first:
            self._logger.warning(
                "tenant database unavailable (%s); known tenants are served from cache, "
                "other calls answer 503 until it returns",
                describe(error),
            )
        else:
            self._logger.warning(
                "tenant database still unavailable after %.0f s (%s); %d calls failed "
                "since the last line",
                elapsed,
                describe(error),
                unreported,
            )

    def recovered(self) -> None:
        """A call succeeded: ends the outage, if there was one."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._since is None:
                return
            elapsed, failed = self._clock() - self._since, self._failed
            self._since, self._failed, self._unreported = None, 0, 0
        self._logger.warning(
            "tenant database available again after %.1f s; %d calls failed during the outage",
            elapsed,
            failed,
        )


def describe(error: BaseException | str) -> str:
    """A one-line reason for a database error: the driver's message, without the SQL
    statement and parameters SQLAlchemy appends (they may carry key material)."""
    if isinstance(error, str):
        text = error
    else:
        original = getattr(error, "orig", None)
        text = str(original if original is not None else error) or type(error).__name__
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return first[:200]


class DatabaseFile:
    """The SQLite file an engine works on, known by its identity (device, inode) from
    the first open on: a file deleted or replaced under a running server is noticed
    (`problem`), never silently recreated empty beside the one still open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self.lost_evidence = self._evidence_of_loss()

    @classmethod
    def of(cls, database_url: str) -> DatabaseFile | None:
        """The file behind a SQLite URL; None for in-memory, `file:` URIs and servers."""
        url = normalize_url(database_url)
        database = url.database or ""
        if (
            url.get_backend_name() != "sqlite"
            or database in ("", ":memory:")
            or database.startswith("file:")
            or url.query.get("mode") == "memory"
        ):
            return None
        return cls(Path(database).expanduser().absolute())

    def problem(self, *, read_header: bool = False) -> str | None:
        """Why the file at the path is no longer the one opened, or None; with
        ``read_header``, also when it no longer starts as a SQLite database does
        (connections that hold its first page would not notice)."""
        with self._lock:
            opened = self._identity
        if opened is None:
            return None
        now = self._identity_now()
        if now is None:
            return f"database file {self.path} was removed while in use"
        if now != opened:
            return f"database file {self.path} was replaced while in use"
        if read_header:
            # Through SQLite, never open()/close() on the file: closing any descriptor
            # of the file drops every POSIX lock this process holds on it, so another
            # process would checkpoint and delete the WAL under our open connections
            # and their later writes would go nowhere. SQLite keeps its descriptors
            # open while other connections of the process use the file; a fresh
            # connection reads the header from disk.
            try:
                with closing(sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True)) as db:
                    db.execute("PRAGMA schema_version").fetchone()
            except sqlite3.DatabaseError as exc:
                return f"database file {self.path} cannot be read as SQLite: {exc}"
        return None

    def watch(self, engine: Engine) -> None:
        """Record the file's identity on the first open; refuse later opens of any
        other file (or none: a later open never creates the file)."""

        @event.listens_for(engine, "do_connect")
        def _open_only_the_same_file(
            _dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]
        ) -> None:
            with self._lock:
                opened = self._identity is not None
            if not opened:
                return
            problem = self.problem()
            if problem is not None:  # a missing file is refused here, never recreated
                raise sqlite3.OperationalError(problem)
            # Not reopened as a `file:...?mode=rw` URI: a connection opened that way
            # beside plain ones lost sight of other processes' WAL (their writes were
            # invisible to it after another process closed its last connection).

        @event.listens_for(engine, "connect")
        def _remember_identity(_dbapi_connection: Any, _record: Any) -> None:
            with self._lock:
                if self._identity is None:
                    self._identity = self._identity_now()

    def _identity_now(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def _evidence_of_loss(self) -> str | None:
        if self.path.exists():
            return None
        for suffix in ("-wal", "-shm"):
            leftover = self.path.with_name(self.path.name + suffix)
            if leftover.exists():
                return (
                    f"database file {self.path} is missing but {leftover.name} is there: "
                    "a database was probably deleted while in use"
                )
        return None


class _QueuePool(QueuePool):
    """A QueuePool whose exhaustion reads as the database being unavailable (an
    OperationalError, what every user of the engine handles) instead of a bare
    TimeoutError that would answer 500."""

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            return super()._do_get()
        except PoolTimeout as exc:
            raise OperationalError("(pool checkout)", None, exc) from exc


# SQLAlchemy names a pool's logger after its class: ours would sit outside the
# `sqlalchemy` family (quiet by default) and log "Pool disposed" lines at INFO.
logging.getLogger(f"{__name__}.{_QueuePool.__name__}").setLevel(logging.WARNING)


def _postgres_timeouts(url: URL, limits: StoreLimits) -> dict[str, Any]:
    timeout_ms = math.ceil(limits.call_timeout_seconds * 1000)
    options = f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
    given = url.query.get("options")
    if isinstance(given, str) and given:
        options = f"{given} {options}"
    # libpq reads whole seconds and treats anything under 2 as 2.
    return {
        "connect_timeout": max(2, math.ceil(limits.connect_timeout_seconds)),
        "options": options,
    }


def _use_write_ahead_log(engine: Engine) -> None:
    # WAL lets readers run beside a writer and, with synchronous=NORMAL, a commit
    # costs no fsync (bench/micro-timings.md).
    # A crash can lose the last commits but never corrupts the file.
    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def _begin_sqlite_explicitly(engine: Engine, database_file: DatabaseFile | None) -> None:
    # pysqlite's own implicit BEGIN cannot be told to be IMMEDIATE, and it
    # commits around DDL; switch it off and emit BEGIN ourselves (the recipe
    # from the SQLAlchemy SQLite dialect docs).
    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        writes = connection.get_execution_options().get(_WRITE_OPTION, False)
        if writes and database_file is not None:
            # A pooled connection still holds a deleted file: its writes would succeed
            # into a file no one will ever open again. (Its cached first page may
            # also hide a header overwritten on disk.)
            problem = database_file.problem(read_header=True)
            if problem is not None:
                raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(problem))
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _broken_file_is_unavailable(engine: Engine) -> None:
    # "file is not a database" and "database disk image is malformed" come as the bare
    # DatabaseError class: a store that cannot be used (503), like one that is down.
    @event.listens_for(engine, "handle_error", retval=True)
    def _as_operational(context: ExceptionContext) -> BaseException | None:
        original = context.original_exception
        if type(original) is sqlite3.DatabaseError:
            return OperationalError(context.statement, context.parameters, original)
        return None
