"""TenantStore: tenants in SQLite (default) or PostgreSQL, with a fast auth path.

`authenticate` runs on every request, so it answers from a small in-process
cache for `cache_ttl_seconds` (changes made by another process show up within
that time; changes made through this instance drop the cache at once), and
keeps serving the last good answer for `stale_grace_seconds` while the
database is down. Every call is bounded (`StoreLimits`): a hung database answers
StoreUnavailable within the call timeout, and one expired cache entry costs one
query however many requests present its key (single flight). A key in use is
refreshed in the background once its entry is half through the TTL, so under traffic
it never expires and its requests never wait for the database.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from alembic import command
from sqlalchemy import Engine, delete, exists, select, text
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.defense.params import DefenseParams, InvalidParameters
from service.tenants.domain import (
    CorruptTenant,
    StoreUnavailable,
    Tenant,
    TenantExists,
    TenantNotFound,
    normalize_allowed_models,
    refuse_clean_outputs,
    validate_name,
    validate_rate_limit,
)
from service.tenants.engine import (
    CallGate,
    DatabaseFile,
    OutageLog,
    StoreLimits,
    access_guard,
    describe,
    for_writes,
    make_engine,
)
from service.tenants.keys import PresentedKey, generate_api_key, hash_api_key
from service.tenants.migrations import build_alembic_config
from service.tenants.tables import TenantRow

logger = logging.getLogger(__name__)

PARAM_FIELDS = frozenset(f.name for f in fields(DefenseParams))
LIMIT_FIELDS = ("rate_limit_per_second", "rows_per_second", "repeated_queries_per_minute")
UPDATABLE_FIELDS = PARAM_FIELDS | {"allowed_models", *LIMIT_FIELDS}
NOISE_SECRET_BYTES = 32
_MAX_CACHED_KEYS = 4096
_REFRESH_AHEAD_FRACTION = 0.5
"""A key in use is looked up again once its cache entry is this far through its TTL."""
# Any 64-bit constant; serialises concurrent `migrate()` calls of many replicas.
_MIGRATION_LOCK_KEY = 0x64796E616E6F6973
_UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    tenant: Tenant
    loaded_at: float


def _aware(moment: datetime) -> datetime:
    # SQLite drops the offset on the way back; everything we write is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _to_tenant(row: TenantRow) -> Tenant:
    try:
        params = DefenseParams(
            base_variance=row.base_variance,
            lambda_scale=row.lambda_scale,
            temperature=row.temperature,
            ensemble_size=row.ensemble_size,
            sensitivity=row.sensitivity,  # type: ignore[arg-type]  # coerced by DefenseParams
            noise_mode=row.noise_mode,  # type: ignore[arg-type]
            output_mode=row.output_mode,  # type: ignore[arg-type]
            confidence_buckets=row.confidence_buckets,
        )
    except (InvalidParameters, ValueError) as exc:
        # Logged by name and reason only: never the row's secret or key material.
        logger.error("stored tenant %r is corrupt: %s", row.name, exc)
        raise CorruptTenant(f"stored tenant {row.name!r} is corrupt") from None
    return Tenant(
        name=row.name,
        params=params,
        allowed_models=None if row.allowed_models is None else frozenset(row.allowed_models),
        noise_secret=bytes(row.noise_secret),
        rate_limit_per_second=row.rate_limit_per_second,
        version=row.version,
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
        key_id=row.key_id,
        rows_per_second=row.rows_per_second,
        repeated_queries_per_minute=row.repeated_queries_per_minute,
    )


def _presented(api_key: str | PresentedKey | None) -> PresentedKey | None:
    if api_key is None or isinstance(api_key, PresentedKey):
        return api_key
    return PresentedKey.parse(api_key)


def _write_params(row: TenantRow, params: DefenseParams) -> None:
    row.base_variance = float(params.base_variance)
    row.lambda_scale = float(params.lambda_scale)
    row.temperature = float(params.temperature)
    row.ensemble_size = int(params.ensemble_size)
    row.sensitivity = params.sensitivity.value
    row.noise_mode = params.noise_mode.value
    row.output_mode = params.output_mode.value
    row.confidence_buckets = int(params.confidence_buckets)


def _changed_params(params: DefenseParams, changes: dict[str, Any]) -> DefenseParams:
    try:
        return replace(params, **{k: v for k, v in changes.items() if k in PARAM_FIELDS})
    except InvalidParameters:
        raise
    except (TypeError, ValueError) as exc:  # e.g. an unknown sensitivity name
        raise InvalidParameters(str(exc)) from exc


def _stored_models(models: frozenset[str] | None) -> list[str] | None:
    return None if models is None else sorted(models)


class TenantStore:
    """Tenants, their API keys and defense parameters, in a SQL database.

    Thread-safe: every call uses its own session; the auth cache is locked.
    The schema comes only from the migrations: call `migrate()` first.
    """

    def __init__(
        self,
        database_url: str,
        *,
        cache_ttl_seconds: float = 1.0,
        stale_grace_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        limits: StoreLimits | None = None,
    ) -> None:
        if cache_ttl_seconds < 0 or stale_grace_seconds < 0:
            raise ValueError("cache_ttl_seconds and stale_grace_seconds must be >= 0")
        limits = limits if limits is not None else StoreLimits()
        # Looked at before anything opens the file (which would create it).
        self._file = DatabaseFile.of(database_url)
        self._engine = make_engine(database_url, limits, database_file=self._file)
        self._gate = CallGate(limits)
        self._outage = OutageLog(logger)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(for_writes(self._engine), expire_on_commit=False)
        self._guard = access_guard(self._engine)
        self._cache_ttl = cache_ttl_seconds
        self._stale_grace = stale_grace_seconds
        self._clock = clock
        self._last_ping_ok: float | None = None
        self._lock = threading.Lock()
        self._cache: dict[str, _CacheEntry] = {}
        # The lookup in progress per key hash: its other callers wait for it.
        self._flights: dict[str, Future[Tenant | None]] = {}
        # Bumped on every local write, so a lookup that raced a write cannot
        # put the pre-write tenant back into the cache.
        self._generation = 0
        self._refresher: ThreadPoolExecutor | None = None  # started on first refresh-ahead

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for health checks and tests)."""
        return self._engine

    def migrate(self) -> None:
        """Bring the schema to the newest migration; a no-op when it is there."""
        with (
            self._guard,
            self._unavailable_as_error(),
            for_writes(self._engine).begin() as connection,
        ):
            if connection.dialect.name == "postgresql":
                # Not bounded like a request's statements: another replica may be
                # migrating, and a migration may take its time.
                connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
                connection.exec_driver_sql("SET LOCAL lock_timeout = 0")
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            command.upgrade(build_alembic_config(connection), "head")

    def create(
        self,
        name: str,
        params: DefenseParams | None = None,
        allowed_models: Iterable[str] | None = None,
        rate_limit_per_second: float | None = None,
        rows_per_second: float | None = None,
        repeated_queries_per_minute: float | None = None,
        *,
        allow_clean_outputs: bool = True,
    ) -> tuple[Tenant, str]:
        """Add a tenant; returns it with its API key, the only time the key is shown.

        ``allow_clean_outputs=False`` (what the admin API and the CLI pass unless
        DYNANOISE_ALLOW_CLEAN_OUTPUTS is set) refuses base_variance 0 with
        InvalidParameters; the store itself holds any valid parameters.
        """
        validate_name(name)
        params = DefenseParams() if params is None else params
        if not isinstance(params, DefenseParams):
            raise TypeError("params must be a DefenseParams")
        if not allow_clean_outputs:
            refuse_clean_outputs(params)
        models = normalize_allowed_models(allowed_models)
        rate = validate_rate_limit(rate_limit_per_second)
        rows_rate = validate_rate_limit(rows_per_second, "rows_per_second")
        repeats_rate = validate_rate_limit(
            repeated_queries_per_minute, "repeated_queries_per_minute"
        )
        api_key, key_id = generate_api_key()
        now = datetime.now(UTC)
        row = TenantRow(
            name=name,
            key_id=key_id,
            key_hash=hash_api_key(api_key),
            noise_secret=secrets.token_bytes(NOISE_SECRET_BYTES),
            allowed_models=_stored_models(models),
            rate_limit_per_second=rate,
            rows_per_second=rows_rate,
            repeated_queries_per_minute=repeats_rate,
            version=1,
            created_at=now,
            updated_at=now,
        )
        _write_params(row, params)

        def insert(session: Session) -> Tenant:
            if session.scalar(select(exists().where(TenantRow.name == name))):
                raise TenantExists(f"tenant {name!r} already exists")
            session.add(row)
            try:
                session.flush()
            except IntegrityError as exc:  # lost a race with another writer
                raise TenantExists(f"tenant {name!r} already exists") from exc
            return _to_tenant(row)

        return self._write(insert), api_key

    def get(self, name: str) -> Tenant:
        """The tenant called `name`; raises TenantNotFound."""
        return self._read(lambda session: _to_tenant(self._row(session, name)))

    def list(self) -> list[Tenant]:
        """All tenants, by name."""

        def tenants(session: Session) -> list[Tenant]:
            rows = session.scalars(select(TenantRow).order_by(TenantRow.name))
            return [_to_tenant(row) for row in rows]

        return self._read(tenants)

    def is_empty(self) -> bool:
        """Whether no tenant exists yet, for seeding a fresh store (the demo tenant).

        False, with one warning saying why, when the SQLite file was missing at open
        while its `-wal` or `-shm` was there: a database was lost here, not never made,
        and nothing is seeded over the loss.
        """
        evidence = None if self._file is None else self._file.lost_evidence
        if evidence is not None:
            logger.warning(
                "%s; not seeding the new empty database (no demo tenant is created): "
                "restore the lost file if you can",
                evidence,
            )
            return False
        return self._read(
            lambda session: not session.scalar(select(exists().where(TenantRow.id.is_not(None))))
        )

    def update(self, name: str, *, allow_clean_outputs: bool = True, **changes: Any) -> Tenant:
        """Change parameters, allowed_models or a limit (LIMIT_FIELDS).

        Parameters are validated through DefenseParams (InvalidParameters).
        The version is bumped when a stored value actually changes. With
        ``allow_clean_outputs=False`` a change of defense parameters that leaves
        base_variance at 0 is refused (InvalidParameters); changing only the models
        or limits of such a tenant is not.
        """
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise TypeError(f"cannot update {sorted(unknown)}; allowed: {sorted(UPDATABLE_FIELDS)}")

        def change(session: Session) -> Tenant:
            row = self._row(session, name, for_update=True)
            current = _to_tenant(row)
            params = _changed_params(current.params, changes)
            if not allow_clean_outputs and PARAM_FIELDS.intersection(changes):
                refuse_clean_outputs(params)
            models = (
                normalize_allowed_models(changes["allowed_models"])
                if "allowed_models" in changes
                else current.allowed_models
            )
            limits = {
                limit: validate_rate_limit(changes[limit], limit)
                if limit in changes
                else getattr(current, limit)
                for limit in LIMIT_FIELDS
            }
            if (params, models) == (current.params, current.allowed_models) and all(
                value == getattr(current, limit) for limit, value in limits.items()
            ):
                return current
            _write_params(row, params)
            row.allowed_models = _stored_models(models)
            for limit, value in limits.items():
                setattr(row, limit, value)
            self._touch(row)
            return _to_tenant(row)

        return self._write(change)

    def rotate_key(self, name: str) -> str:
        """Issue a new API key; the old one stops working at once."""
        api_key, key_id = generate_api_key()

        def rotate(session: Session) -> None:
            row = self._row(session, name, for_update=True)
            row.key_id = key_id
            row.key_hash = hash_api_key(api_key)
            self._touch(row)

        self._write(rotate)
        return api_key

    def delete(self, name: str) -> None:
        """Remove a tenant; raises TenantNotFound."""

        def remove(session: Session) -> None:
            result = session.execute(delete(TenantRow).where(TenantRow.name == name))
            if getattr(result, "rowcount", 0) == 0:
                raise TenantNotFound(f"no tenant named {name!r}")

        self._write(remove)

    def authenticate(self, api_key: str | PresentedKey | None) -> Tenant | None:
        """The tenant owning `api_key`, or None for a malformed or unknown key.

        Takes the key as sent or as a `PresentedKey` (parsed and hashed once per
        request). Raises StoreUnavailable when the database is down and no answer
        for this key was loaded within `stale_grace_seconds`.
        """
        presented = _presented(api_key)
        if presented is None:
            return None
        key_hash = presented.key_hash
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key_hash)
            if entry is not None and now - entry.loaded_at < self._cache_ttl:
                refresh = self._claim_refresh(key_hash, entry, now)
                fresh: Tenant | None = entry.tenant
            else:
                fresh = None
                in_flight = self._flights.get(key_hash)
                leads = in_flight is None
                flight = in_flight if in_flight is not None else Future()
                if leads:
                    self._flights[key_hash] = flight
                    generation = self._generation
        if fresh is not None:
            self._start_refresh(presented, refresh, now)
            return fresh
        stale = entry.tenant if entry and now - entry.loaded_at <= self._stale_grace else None
        if leads:
            self._look_up(presented, flight, generation, now)
        elif stale is not None:
            return stale  # another call is asking the database for this key right now
        try:
            tenant = self._gate.wait(flight)
        except StoreUnavailable as exc:
            self._outage.failed(exc.__cause__ or exc)
            if stale is None:
                raise
            return stale
        self._outage.recovered()
        return tenant

    def cached(
        self, api_key: str | PresentedKey | None, *, min_remaining_seconds: float = 0.0
    ) -> Tenant | None:
        """The tenant owning ``api_key`` if this process holds a fresh answer for it
        (one that stays fresh for at least ``min_remaining_seconds`` more), else None.
        While another call is asking the database for this key, the last answer within
        `stale_grace_seconds`, which is what `authenticate` gives that call's followers.

        Never touches the database, so it may run on the event loop: a None means
        "ask ``authenticate``", not "unknown key". Answering the followers here keeps
        them on the event loop: when a key's entry expired after an idle spell, one
        request asks the database and the rest do not each take a pool thread (those
        threads convoyed on the GIL, ~15 ms a request, the start-of-run tail).
        """
        presented = _presented(api_key)
        if presented is None:
            return None
        now = self._clock()
        with self._lock:
            entry = self._cache.get(presented.key_hash)
            if entry is None:
                return None
            age = now - entry.loaded_at
            if age + min_remaining_seconds >= self._cache_ttl:
                asked = presented.key_hash in self._flights
                return entry.tenant if asked and age <= self._stale_grace else None
            refresh = self._claim_refresh(presented.key_hash, entry, now)
        self._start_refresh(presented, refresh, now)
        return entry.tenant

    def lookup_under_way(self, api_key: str | PresentedKey | None) -> Future[Tenant | None] | None:
        """For a key this process has answered before: the lookup of its tenant under
        way, started here on the store's refresh thread when none is. None for a
        malformed key or one never answered, whose lookup stays with `authenticate`.

        Never blocks, so the event loop can await the result instead of giving a pool
        thread to each request whose key's entry expired while the key was idle.
        """
        presented = _presented(api_key)
        if presented is None:
            return None
        key_hash = presented.key_hash
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key_hash)
            if entry is None or now - entry.loaded_at < self._cache_ttl:
                return None  # never answered, or fresh: nothing to wait for
            flight = self._flights.get(key_hash)
            if flight is not None:
                return flight
            flight = self._flights[key_hash] = Future()
            generation = self._generation
        self._start_refresh(presented, (flight, generation), now)
        return flight

    def ping(self) -> bool:
        """Whether the store can be used (for readiness probes): its SQLite file is
        still the one it opened, intact, and the database answers within the timeout."""
        problem = None if self._file is None else self._file.problem(read_header=True)
        if problem is not None:
            self._outage.failed(problem)
            return False
        try:
            self._read(lambda session: session.execute(text("SELECT 1")).all())
        except StoreUnavailable:
            return False
        self._last_ping_ok = self._clock()
        return True

    def file_intact(self) -> bool:
        """False when the SQLite file this store opened is gone, replaced or broken (a
        loss, not a blip); True for server databases."""
        return self._file is None or self._file.problem(read_header=True) is None

    def within_stale_grace(self) -> bool:
        """Whether the last successful ``ping`` is recent enough that known tenants are
        still served from the cache (`stale_grace_seconds`): a blip of the database, not
        a reason to take this process out of a load balancer."""
        last = self._last_ping_ok
        return last is not None and self._clock() - last <= self._stale_grace

    def close(self) -> None:
        """Drop the cache and close pooled connections."""
        self._invalidate()
        with self._lock:
            refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.shutdown(wait=False, cancel_futures=True)
        self._engine.dispose()

    def __enter__(self) -> TenantStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _claim_refresh(
        self, key_hash: str, entry: _CacheEntry, now: float
    ) -> tuple[Future[Tenant | None], int] | None:
        """Under the lock: a flight for a refresh of ``entry`` when it is past the
        refresh point and none is under way, else None.

        Refresh-ahead: a key in use is looked up again in the background once its entry
        is half through its TTL, so it never expires under traffic. Without it, every
        second each busy key's entry expired and, until one lookup landed, every request
        presenting it left the event loop for the thread pool: the clusters of slow
        requests a second apart that made the service's p99."""
        if now - entry.loaded_at < self._cache_ttl * _REFRESH_AHEAD_FRACTION:
            return None
        if key_hash in self._flights:
            return None
        flight: Future[Tenant | None] = Future()
        self._flights[key_hash] = flight
        return flight, self._generation

    def _start_refresh(
        self,
        presented: PresentedKey,
        refresh: tuple[Future[Tenant | None], int] | None,
        now: float,
    ) -> None:
        """Run a claimed refresh on the store's refresh thread: never on the caller's
        (which may be the event loop, and the call gate may wait for a slot)."""
        if refresh is None:
            return
        flight, generation = refresh
        with self._lock:
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(1, thread_name_prefix="dynanoise-refresh")
            refresher = self._refresher
        refresher.submit(self._look_up, presented, flight, generation, now)

    def _look_up(
        self,
        presented: PresentedKey,
        flight: Future[Tenant | None],
        generation: int,
        started_at: float,
    ) -> None:
        """Start the database lookup of ``flight``; it lands in the cache and the
        flight when the database answers, however long after its callers gave up."""
        key_hash = presented.key_hash

        def load(session: Session) -> Tenant | None:
            row = session.scalars(
                select(TenantRow).where(TenantRow.key_id == presented.key_id)
            ).first()
            if row is None or not presented.matches(row.key_hash):
                return None
            return _to_tenant(row)

        def land(tenant: Tenant | None, error: BaseException | None) -> None:
            with self._lock:
                if self._flights.get(key_hash) is flight:
                    del self._flights[key_hash]
                if error is None and generation == self._generation:
                    if tenant is None:
                        self._cache.pop(key_hash, None)
                    else:
                        if len(self._cache) >= _MAX_CACHED_KEYS and key_hash not in self._cache:
                            self._cache.pop(next(iter(self._cache)))
                        self._cache[key_hash] = _CacheEntry(tenant, started_at)
            if error is None:
                flight.set_result(tenant)
            else:
                flight.set_exception(error)

        def landed(call: Future[Tenant | None]) -> None:
            error = call.exception()
            land(None if error is not None else call.result(), error)

        try:
            call = self._gate.submit(lambda: self._in_session(load))
        except StoreUnavailable as exc:
            land(None, exc)
            return
        call.add_done_callback(landed)

    @staticmethod
    def _row(session: Session, name: str, *, for_update: bool = False) -> TenantRow:
        query = select(TenantRow).where(TenantRow.name == name)
        if for_update:
            query = query.with_for_update()
        row = session.scalars(query).first()
        if row is None:
            raise TenantNotFound(f"no tenant named {name!r}")
        return row

    @staticmethod
    def _touch(row: TenantRow) -> None:
        row.version += 1
        row.updated_at = datetime.now(UTC)

    def _invalidate(self) -> None:
        with self._lock:
            self._cache.clear()
            self._flights.clear()  # lookups begun before a write must not answer after it
            self._generation += 1

    @contextmanager
    def _unavailable_as_error(self) -> Iterator[None]:
        try:
            yield
        except _UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"tenant database unavailable: {describe(exc)}") from exc

    def _in_session(self, work: Callable[[Session], _T]) -> _T:
        with self._guard, self._unavailable_as_error(), self._sessions() as session:
            return work(session)

    def _read(self, work: Callable[[Session], _T]) -> _T:
        """``work`` in a read session, bounded by the call gate."""
        return self._bounded(lambda: self._in_session(work))

    def _write(self, work: Callable[[Session], _T]) -> _T:
        """``work`` in a write transaction, bounded by the call gate.

        The cache is invalidated after the commit: a lookup that read the old row
        before the commit then cannot re-cache it. A failed write rolled back, so the
        cache (and the last-known-good copies that outages are served from) stays; the
        generation still moves on, in case the failure hid a commit.
        """

        def transaction() -> _T:
            try:
                with (
                    self._guard,
                    self._unavailable_as_error(),
                    self._write_sessions.begin() as session,
                ):
                    result = work(session)
            except BaseException:
                with self._lock:
                    self._generation += 1
                raise
            self._invalidate()
            return result

        return self._bounded(transaction)

    def _bounded(self, call: Callable[[], _T]) -> _T:
        try:
            result = self._gate.call(call)
        except StoreUnavailable as exc:
            self._outage.failed(exc.__cause__ or exc)
            raise
        self._outage.recovered()
        return result
