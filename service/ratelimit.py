"""Per-tenant rate limits, shared by every worker and replica through the tenant database.

The limiter is GCRA (the generic cell rate algorithm): a token bucket written as a
timestamp. With rate r and a bucket of b units, a tenant has a "theoretical arrival
time" tat; a request costing n units at time t is admitted iff

    debt = max(tat - t, 0) <= (b - n) / r,   and then   tat <- t + debt + n / r.

A full bucket admits b units at once and refills at r per second, exactly like a
token bucket, and admission is one atomic statement (`INSERT ... ON CONFLICT DO UPDATE
... WHERE ... RETURNING`) on SQLite and PostgreSQL alike. The row also keeps the 1 / r
its debt was counted in, so a changed limit rescales the debt (a raised limit applies
to the very next request).

A tenant has two buckets, each in a table of its own: requests (`rate_limit_per_second`,
table `rate_limits`, one unit a request, charged before anything is decoded) and input
rows (`rows_per_second`, table `row_limits`, n units for a request of n rows, charged
once the batch is decoded): without the second, one request buys a whole batch of
near-duplicate rows. A request of more rows than the bucket holds can never pass and
is refused outright. Only tenants with a limit set pay for its bucket.

While the database is unreachable the limiter falls back to the same algorithm in
process memory (the limit then holds per process, not in total) rather than refusing
traffic the tenant store still serves from its last known configuration.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, Float, bindparam, case, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.pool import StaticPool

from .errors import RateLimited
from .tenants import Tenant
from .tenants.engine import for_writes
from .tenants.tables import RateLimitRow, RowLimitRow

REQUESTS = "requests"
ROWS = "rows"
_TABLES: dict[str, type[RateLimitRow] | type[RowLimitRow]] = {
    REQUESTS: RateLimitRow,
    ROWS: RowLimitRow,
}

logger = logging.getLogger(__name__)

_UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)
# Slack for the rounding of epoch-second timestamps (about 2e-7 s apart near 2e9), so
# that a full bucket of b admits b requests, not b - 1.
_SLACK_SECONDS = 1e-6
# Rates are clamped into this range (requests per second) so that no ratio of two
# intervals, and no Retry-After, can overflow.
_MIN_RATE, _MAX_RATE = 1e-6, 1e9
_MAX_LOCAL_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request is admitted and, if not, how long until one would be."""

    allowed: bool
    retry_after_seconds: float = 0.0
    over_burst: bool = False  # the request costs more than a full bucket: never admitted


@dataclass(frozen=True, slots=True)
class _Limit:
    """Rate r and bucket size b, as GCRA's two intervals."""

    rate: float
    burst: float

    @property
    def interval(self) -> float:
        """1 / r: how much debt each admitted request adds."""
        return 1.0 / self.rate

    @property
    def tolerance(self) -> float:
        """(b - 1) / r: how much debt still lets a one-unit request through."""
        return self.tolerance_for(1.0)

    def tolerance_for(self, amount: float) -> float:
        """(b - n) / r: how much debt still lets a request of n units through."""
        return (self.burst - amount) / self.rate


@dataclass(slots=True)
class _LocalState:
    tat: float
    interval: float


class RateLimiter:
    """Admits or refuses the requests (and rows) of rate-limited tenants.

    ``engine`` is the tenant store's engine (the buckets live beside the tenants);
    None, or an in-memory SQLite database, keeps the buckets in this process only. A
    tenant's bucket holds ``max(1, rate * burst_seconds)`` requests (or rows).
    """

    def __init__(
        self,
        engine: Engine | None,
        *,
        burst_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not burst_seconds > 0 or not math.isfinite(burst_seconds):
            raise ValueError("burst_seconds must be a finite number > 0")
        # The single connection of an in-memory SQLite database is the store's, which
        # serialises its use with a lock of its own; such a database cannot be shared
        # between processes anyway.
        shared = engine is not None and not isinstance(engine.pool, StaticPool)
        self._engine = for_writes(engine) if shared and engine is not None else None
        self._burst_seconds = burst_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._local: dict[tuple[str, str], _LocalState] = {}
        # A refusal learned from the database holds until the debt it saw has run
        # down (other processes can only add debt), so a flood of refused requests
        # costs no round trips: kept as the time that debt reaches zero, which answers
        # requests of any cost. Keyed by the limit too: a new limit asks again.
        self._refused_until: dict[tuple[str, str, _Limit], float] = {}
        self._degraded = False

    @property
    def shared(self) -> bool:
        """Whether the buckets live in the database (shared) or in this process only."""
        return self._engine is not None

    def enforce(self, tenant: Tenant) -> None:
        """Raise RateLimited when ``tenant`` is over its request limit; a no-op without
        one. Charges one request."""
        rate = tenant.rate_limit_per_second
        if rate is None:
            return
        decision = self.check(tenant.name, rate)
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {rate:g} requests per second exceeded",
                decision.retry_after_seconds,
            )

    def enforce_rows(self, tenant: Tenant, rows: int) -> None:
        """Raise RateLimited when ``tenant`` may not send ``rows`` more input rows now;
        a no-op without a rows-per-second limit. Charges ``rows`` units of its rows
        bucket; a request of more rows than the bucket holds is always refused."""
        rate = tenant.rows_per_second
        if rate is None or rows <= 0:
            return
        decision = self.check(tenant.name, rate, rows, bucket=ROWS)
        if decision.over_burst:
            burst = math.floor(self.burst(rate) + 1e-9)
            raise RateLimited(
                f"a request of {rows} rows is more than this tenant's rows-per-second limit "
                f"admits at once ({burst} rows: {rate:g} rows per second); send at most "
                f"{burst} rows per request",
                decision.retry_after_seconds,
            )
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {rate:g} input rows per second exceeded "
                f"(this request has {rows} rows)",
                decision.retry_after_seconds,
            )

    def burst(self, rate_per_second: float) -> float:
        """The bucket size of a limit of ``rate_per_second``: max(1, rate * burst_seconds)."""
        return self._limit(rate_per_second).burst

    def _limit(self, rate_per_second: float) -> _Limit:
        if not rate_per_second > 0 or not math.isfinite(rate_per_second):
            raise ValueError("rate_per_second must be a finite number > 0")
        rate = min(max(rate_per_second, _MIN_RATE), _MAX_RATE)
        return _Limit(rate, max(1.0, rate * self._burst_seconds))

    def check(
        self, tenant: str, rate_per_second: float, amount: float = 1.0, *, bucket: str = REQUESTS
    ) -> Decision:
        """Take ``amount`` units (one request, or a request's rows) from ``tenant``'s
        ``bucket`` (REQUESTS or ROWS) if it holds them."""
        if bucket not in _TABLES:
            raise ValueError(f"unknown bucket {bucket!r}; known: {sorted(_TABLES)}")
        if not amount > 0 or not math.isfinite(amount):
            raise ValueError("amount must be a finite number > 0")
        limit = self._limit(rate_per_second)
        if amount > limit.burst + _SLACK_SECONDS * limit.rate:
            # Never admitted: a full bucket refills in burst / r.
            return Decision(False, limit.burst / limit.rate, over_burst=True)
        now = self._clock()
        key = (bucket, tenant, limit)
        with self._lock:
            debt_free_at = self._refused_until.get(key)
        if debt_free_at is not None:
            wait = debt_free_at - now - limit.tolerance_for(amount)
            if wait > _SLACK_SECONDS:
                return Decision(False, wait)
        if self._engine is not None:
            try:
                decision = self._check_shared(bucket, tenant, limit, amount, now)
            except _UNAVAILABLE_ERRORS:
                self._note_degraded()
            else:
                self._note_recovered()
                if not decision.allowed:
                    debt_free_at = now + decision.retry_after_seconds + limit.tolerance_for(amount)
                    self._remember_refusal(key, debt_free_at)
                return decision
        return self._check_local(bucket, tenant, limit, amount, now)

    def _check_shared(
        self, bucket: str, tenant: str, limit: _Limit, amount: float, now: float
    ) -> Decision:
        assert self._engine is not None
        table = _TABLES[bucket]
        at = bindparam("now", now, type_=Float)
        interval = bindparam("interval", limit.interval, type_=Float)
        cost = bindparam("cost", amount * limit.interval, type_=Float)
        owed = case((table.tat > at, table.tat - at), else_=0.0)
        debt = owed * (interval / table.interval_seconds)
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        statement = (
            insert(table)
            .values(
                tenant=tenant, tat=now + amount * limit.interval, interval_seconds=limit.interval
            )
            .on_conflict_do_update(
                index_elements=[table.tenant],
                set_={"tat": at + debt + cost, "interval_seconds": interval},
                where=debt <= limit.tolerance_for(amount) + _SLACK_SECONDS,
            )
            .returning(table.tat)
        )
        with self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Bucket state is disposable: losing its last few ms in a crash is
                # harmless, waiting for a WAL flush on every request is not.
                connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            if connection.execute(statement).first() is not None:
                return Decision(True)
            row = connection.execute(
                select(table.tat, table.interval_seconds).where(table.tenant == tenant)
            ).first()
        if row is None:  # deleted between the two statements: try again next time
            return Decision(False, limit.interval)
        owed_now = max(row.tat - now, 0.0) * (limit.interval / row.interval_seconds)
        return Decision(False, max(owed_now - limit.tolerance_for(amount), 0.0))

    def _check_local(
        self, bucket: str, tenant: str, limit: _Limit, amount: float, now: float
    ) -> Decision:
        key = (bucket, tenant)
        tolerance = limit.tolerance_for(amount)
        with self._lock:
            state = self._local.get(key)
            debt = 0.0
            if state is not None:
                debt = max(state.tat - now, 0.0) * (limit.interval / state.interval)
            if debt > tolerance + _SLACK_SECONDS:
                return Decision(False, debt - tolerance)
            if state is None and len(self._local) >= _MAX_LOCAL_ENTRIES:
                self._local.pop(next(iter(self._local)))
            self._local[key] = _LocalState(now + debt + amount * limit.interval, limit.interval)
        return Decision(True)

    def _remember_refusal(self, key: tuple[str, str, _Limit], until: float) -> None:
        with self._lock:
            if len(self._refused_until) >= _MAX_LOCAL_ENTRIES and key not in self._refused_until:
                self._refused_until.pop(next(iter(self._refused_until)))
            self._refused_until[key] = until

    def _note_degraded(self) -> None:
        if not self._degraded:
            self._degraded = True
            logger.warning("rate-limit database unavailable; limiting per process until it returns")

    def _note_recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            logger.warning("rate-limit database reachable again; limits are shared again")
