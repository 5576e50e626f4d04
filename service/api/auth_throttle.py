"""Throttle on failed authentication, per client address.

Every 401 (a wrong or missing tenant key, a wrong admin token) takes a token from its
client address's bucket (`auth_failure_burst` tokens, refilled at
`auth_failures_per_minute`); an address with an empty bucket is answered 429 with
Retry-After before anything of its request is read or checked, so guessing keys or the
admin token costs time and the store is not queried for them. The address is the ASGI
scope's client: the connection's peer, or what a trusted proxy forwards
(DYNANOISE_TRUSTED_PROXIES). One throttle per process, its memory bounded by
`auth_throttle_max_clients`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import RateLimited
from ..settings import Settings
from .status import error_response, route_path

__all__ = ["AuthFailureThrottle", "AuthThrottleMiddleware", "with_auth_throttle"]

UNAUTHORIZED = 401


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class AuthFailureThrottle:
    """Token buckets of failed authentications, one per client address.

    A bucket holds at most ``burst`` tokens and regains ``per_minute / 60`` a second;
    a failure takes one. Full buckets are forgotten (they say nothing a missing one
    does not), and beyond ``max_clients`` the longest idle bucket goes first.
    """

    def __init__(
        self,
        burst: int,
        per_minute: float,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return 0.0
        tokens = self._refill(bucket)
        if tokens >= self.burst:
            del self._buckets[client]
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def record_failure(self, client: str) -> None:
        """``client`` failed to authenticate: take a token from its bucket."""
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(float(self.burst), self._clock())
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._refill(bucket)
            self._buckets.move_to_end(client)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def _refill(self, bucket: _Bucket) -> float:
        now = self._clock()
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket.tokens


class AuthThrottleMiddleware:
    """ASGI middleware: answers 429 to a throttled client address, and counts the 401s
    the application answers against the address that received them."""

    def __init__(self, app: ASGIApp, throttle: AuthFailureThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if not client:
            await self.app(scope, receive, send)
            return
        address: str = client[0]
        throttle = self.throttle
        wait = throttle.retry_after(address)
        if wait > 0:
            refused = RateLimited(
                "too many failed authentications from this address; retry later", wait
            )
            await error_response(refused, route_path(scope))(scope, receive, send)
            return

        async def send_counting_failures(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == UNAUTHORIZED:
                throttle.record_failure(address)
            await send(message)

        await self.app(scope, receive, send_counting_failures)


def with_auth_throttle(app: ASGIApp, settings: Settings) -> ASGIApp:
    """``app`` behind the failed-authentication throttle that ``settings`` describe
    (``app`` itself when `auth_failure_burst` is 0)."""
    if settings.auth_failure_burst == 0:
        return app
    throttle = AuthFailureThrottle(
        settings.auth_failure_burst,
        settings.auth_failures_per_minute,
        settings.auth_throttle_max_clients,
    )
    return AuthThrottleMiddleware(app, throttle)
