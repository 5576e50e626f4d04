"""Per-tenant rate limits, shared by every worker and replica through the tenant database.

The limiter is GCRA (the generic cell rate algorithm): a token bucket written as a
timestamp. With rate r and a bucket of b requests, a tenant has a "theoretical arrival
time" tat; a request at time t is admitted iff

    debt = max(tat - t, 0) <= (b - 1) / r,   and then   tat <- t + debt + 1 / r.

A full bucket admits b requests at once and refills at r per second, exactly like a
token bucket, and admission is one atomic statement (`INSERT ... ON CONFLICT DO UPDATE
... WHERE ... RETURNING`) on SQLite and PostgreSQL alike. The row also keeps the 1 / r
its debt was counted in, so a changed limit rescales the debt (a raised limit applies
to the very next request). Only tenants with `rate_limit_per_second` set pay for this.

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
from .tenants.tables import RateLimitRow

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
        """(b - 1) / r: how much debt still lets a request through."""
        return (self.burst - 1.0) / self.rate


@dataclass(slots=True)
class _LocalState:
    tat: float
    interval: float


class RateLimiter:
    """Admits or refuses the requests of rate-limited tenants.

    ``engine`` is the tenant store's engine (the buckets live beside the tenants);
    None, or an in-memory SQLite database, keeps the buckets in this process only. A
    tenant's bucket holds ``max(1, rate * burst_seconds)`` requests.
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
        self._local: dict[str, _LocalState] = {}
        # A refusal learned from the database holds until the debt it saw has run
        # down (other processes can only add debt), so a flood of refused requests
        # costs no round trips. Keyed by the limit too: a new limit asks again.
        self._refused_until: dict[tuple[str, _Limit], float] = {}
        self._degraded = False

    @property
    def shared(self) -> bool:
        """Whether the buckets live in the database (shared) or in this process only."""
        return self._engine is not None

    def enforce(self, tenant: Tenant) -> None:
        """Raise RateLimited when ``tenant`` is over its limit; a no-op without a limit."""
        rate = tenant.rate_limit_per_second
        if rate is None:
            return
        decision = self.check(tenant.name, rate)
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {rate:g} requests per second exceeded",
                decision.retry_after_seconds,
            )

    def check(self, tenant: str, rate_per_second: float) -> Decision:
        """Take one request from ``tenant``'s bucket if it holds one."""
        if not rate_per_second > 0 or not math.isfinite(rate_per_second):
            raise ValueError("rate_per_second must be a finite number > 0")
        rate = min(max(rate_per_second, _MIN_RATE), _MAX_RATE)
        limit = _Limit(rate, max(1.0, rate * self._burst_seconds))
        now = self._clock()
        with self._lock:
            refused_until = self._refused_until.get((tenant, limit))
        if refused_until is not None and now < refused_until - _SLACK_SECONDS:
            return Decision(False, refused_until - now)
        if self._engine is not None:
            try:
                decision = self._check_shared(tenant, limit, now)
            except _UNAVAILABLE_ERRORS:
                self._note_degraded()
            else:
                self._note_recovered()
                if not decision.allowed:
                    self._remember_refusal((tenant, limit), now + decision.retry_after_seconds)
                return decision
        return self._check_local(tenant, limit, now)

    def _check_shared(self, tenant: str, limit: _Limit, now: float) -> Decision:
        assert self._engine is not None
        at = bindparam("now", now, type_=Float)
        interval = bindparam("interval", limit.interval, type_=Float)
        owed = case((RateLimitRow.tat > at, RateLimitRow.tat - at), else_=0.0)
        debt = owed * (interval / RateLimitRow.interval_seconds)
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        statement = (
            insert(RateLimitRow)
            .values(tenant=tenant, tat=now + limit.interval, interval_seconds=limit.interval)
            .on_conflict_do_update(
                index_elements=[RateLimitRow.tenant],
                set_={"tat": at + debt + interval, "interval_seconds": interval},
                where=debt <= limit.tolerance + _SLACK_SECONDS,
            )
            .returning(RateLimitRow.tat)
        )
        with self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Bucket state is disposable: losing its last few ms in a crash is
                # harmless, waiting for a WAL flush on every request is not.
                connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            if connection.execute(statement).first() is not None:
                return Decision(True)
            row = connection.execute(
                select(RateLimitRow.tat, RateLimitRow.interval_seconds).where(
                    RateLimitRow.tenant == tenant
                )
            ).first()
        if row is None:  # deleted between the two statements: try again next time
            return Decision(False, limit.interval)
        owed_now = max(row.tat - now, 0.0) * (limit.interval / row.interval_seconds)
        return Decision(False, max(owed_now - limit.tolerance, 0.0))

    def _check_local(self, tenant: str, limit: _Limit, now: float) -> Decision:
        with self._lock:
            state = self._local.get(tenant)
            debt = 0.0
            if state is not None:
                debt = max(state.tat - now, 0.0) * (limit.interval / state.interval)
            if debt > limit.tolerance + _SLACK_SECONDS:
                return Decision(False, debt - limit.tolerance)
            if state is None and len(self._local) >= _MAX_LOCAL_ENTRIES:
                self._local.pop(next(iter(self._local)))
            self._local[tenant] = _LocalState(now + debt + limit.interval, limit.interval)
        return Decision(True)

    def _remember_refusal(self, key: tuple[str, _Limit], until: float) -> None:
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
