"""Admission control: a bounded queue in front of the inference routes of one worker.

Triton's queue policy, per process: at most ``max_in_flight`` inference requests are
processed at once; the next ones wait in FIFO order, at most ``max_queue`` of them and
each at most ``max_queue_delay_seconds``, counted from when the HTTP protocol created
the request's task (its ``ARRIVAL_EXTENSION``): a request answered on the event loop
holds no slot while others wait for the loop, so the wait a saturated worker imposes
happens before any middleware runs, and counts too. A request beyond either bound is
answered 503 ``overloaded`` with ``Retry-After`` at once instead of being queued
without limit.
So an admitted request waits at most the delay, and a client of an overloaded worker
learns it in milliseconds and can go elsewhere. A waiting request whose client
disconnects leaves the queue at once, unanswered (``client_gone``): its slot would
serve nobody, and a load balancer or a client that gives up and retries would
otherwise queue its new request behind its own orphan. Only inference requests
(`service.api.inference.INFERENCE_ROUTES`) are admitted or shed: health, metadata,
admin and docs always pass. One event loop per worker, so no locks.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from starlette.types import ASGIApp, Receive, Scope, Send

from ..runtime.batching import REQUEST_BACKLOG, RequestBacklog
from .http_limits import ARRIVAL_EXTENSION
from .inference import match
from .middleware import SECURITY_HEADERS
from .status import ErrorStatus, error_body, error_headers, is_v2_path, route_path

__all__ = [
    "OVERLOADED",
    "AdmissionController",
    "AdmissionLimits",
    "AdmissionMiddleware",
    "ShedReason",
    "is_inference_request",
]

ShedReason = Literal["queue_full", "queue_timeout", "client_gone"]
"""Why a request was shed: no room in the queue, it waited the longest delay, or its
client disconnected before it was admitted (then nothing is answered)."""

Shed = Callable[[str, ShedReason, float], None]
"""Told of every request the middleware sheds: (path, reason, seconds it waited)."""

_NEVER = float("inf")

RETRY_AFTER_SECONDS = 1
"""What a shed request's Retry-After says: a queue drains in milliseconds, and a
client (or a load balancer) that waits longer only idles the worker."""

OVERLOADED = ErrorStatus(
    503,
    "overloaded",
    f"server overloaded: retry after {RETRY_AFTER_SECONDS} s",
    {"Retry-After": str(RETRY_AFTER_SECONDS)},
)
"""The answer to a shed request (v1 or v2 body shape by its path)."""


@dataclass(frozen=True)
class AdmissionLimits:
    """See the settings of the same names (``admission_*``). ``max_in_flight`` 0:
    admission off; ``max_queue`` 0 or ``max_queue_delay_seconds`` 0: that bound is
    off (Triton's convention for its queue policy)."""

    max_in_flight: int = 0
    max_queue: int = 0
    max_queue_delay_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 0 or self.max_queue < 0 or self.max_queue_delay_seconds < 0:
            raise ValueError("admission limits must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.max_in_flight > 0


class _Waiter(NamedTuple):
    future: asyncio.Future[ShedReason | None]  # None when admitted, else why shed
    deadline: float  # the loop's time by which it is shed, inf without a delay


class AdmissionController:
    """Slots for ``max_in_flight`` requests and a FIFO queue of waiters for them.

    A finished request hands its slot straight to the oldest waiter, so a newcomer
    never overtakes the queue. One timer, armed for the earliest deadline, sheds the
    waiters past theirs (a timer per waiter cost ~3 % of a queued request's CPU at
    concurrency 256: bench/micro-timings.md). A waiter handed a slot runs on the loop's
    next turn: it is counted in ``backlog`` until it does, like a request whose task is
    about to start, so that it may share a model call with the others of that turn
    (`service.runtime.batching.RequestBacklog`). Use from one event loop only.
    """

    def __init__(
        self,
        limits: AdmissionLimits,
        on_depth: Callable[[int], None] | None = None,
        backlog: RequestBacklog = REQUEST_BACKLOG,
    ) -> None:
        if not limits.enabled:
            raise ValueError("AdmissionController needs max_in_flight > 0")
        self.limits = limits
        self.in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        self._on_depth = on_depth
        self._backlog = backlog

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

    async def acquire(
        self, waited: float = 0.0, arrival: dict[str, Any] | None = None
    ) -> ShedReason | None:
        """Take a slot, waiting in the queue if need be: None once admitted (call
        `release` when done), else why the request is shed. ``waited``: seconds the
        request already waited for the event loop since it arrived; they count against
        ``max_queue_delay_seconds`` like time in the queue. ``arrival``: the request's
        ``ARRIVAL_EXTENSION``, through which the HTTP protocol reports a lost client."""
        if arrival is not None and arrival.get("lost"):
            return "client_gone"
        delay = self.limits.max_queue_delay_seconds
        if delay and waited >= delay:
            return "queue_timeout"
        if self.in_flight < self.limits.max_in_flight and not self._waiters:
            self.in_flight += 1
            return None
        if self.limits.max_queue and len(self._waiters) >= self.limits.max_queue:
            return "queue_full"
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), loop.time() + delay - waited if delay else _NEVER)
        self._waiters.append(waiter)
        self._depth_changed()
        if delay and (self._expiry is None or waiter.deadline < self._expiry.when()):
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = loop.call_at(waiter.deadline, self._shed_overdue)
        if arrival is not None:
            arrival["on_lost"] = functools.partial(self._drop, waiter, "client_gone")
        try:
            reason = await waiter.future
            if reason is None:
                self._backlog.started += 1  # counted created when handed the slot
        except asyncio.CancelledError:
            # The request's task was cancelled (shutdown): give back a slot that was
            # handed over in the meantime, or leave the queue.
            future = waiter.future
            if future.done() and not future.cancelled() and future.result() is None:
                self._backlog.started += 1
                self.release()
            else:
                self._leave(waiter)
            raise
        finally:
            if arrival is not None:
                arrival.pop("on_lost", None)
        return reason

    def release(self) -> None:
        """Give the slot back: to the oldest waiter when there is one."""
        while self._waiters:
            future = self._waiters.popleft().future
            if not future.done():
                self._depth_changed()
                future.set_result(None)  # admitted: the slot passes on, in_flight unchanged
                self._backlog.created += 1  # it runs on the loop's next turn
                return
        self.in_flight -= 1

    def _shed_overdue(self) -> None:
        """The expiry timer: shed every waiter past its deadline, then re-arm for the
        earliest deadline left. Deadlines follow arrival, so that is usually the oldest
        waiter's, and the timer fires about once per delay however many wait."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        overdue = [waiter for waiter in self._waiters if waiter.deadline <= now]
        for waiter in overdue:
            self._drop(waiter, "queue_timeout")
        earliest = min((waiter.deadline for waiter in self._waiters), default=_NEVER)
        if earliest < _NEVER:
            self._expiry = loop.call_at(earliest, self._shed_overdue)

    def _drop(self, waiter: _Waiter, reason: ShedReason) -> None:
        """Take a waiter out of the queue, shed for ``reason`` (its delay ran out, or its
        client disconnected)."""
        if not waiter.future.done():
            self._leave(waiter)
            waiter.future.set_result(reason)

    def _leave(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return
        self._depth_changed()

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._waiters))


def is_inference_request(scope: Scope) -> bool:
    """A POST to one of the inference routes (the only requests admission holds)."""
    return scope["method"] == "POST" and match(route_path(scope)) is not None


class AdmissionMiddleware:
    """Pure ASGI: inference requests pass through an `AdmissionController` (one per
    middleware, so one per worker process); the shed are answered 503 ``overloaded``
    with ``Retry-After``, the security headers and the error body of their protocol.
    Everything else, and everything when the limits are off, passes untouched."""

    def __init__(
        self,
        app: ASGIApp,
        limits: AdmissionLimits,
        *,
        on_shed: Shed | None = None,
        on_depth: Callable[[int], None] | None = None,
        admits: Callable[[Scope], bool] = is_inference_request,
    ) -> None:
        self.app = app
        self.controller = AdmissionController(limits, on_depth) if limits.enabled else None
        self.on_shed = on_shed
        self.admits = admits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        controller = self.controller
        if controller is None or scope["type"] != "http" or not self.admits(scope):
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        arrival = scope.get("extensions", {}).get(ARRIVAL_EXTENSION)
        waited = _waited_for_the_loop(arrival)
        reason = await controller.acquire(waited, arrival)
        if reason is not None:
            if self.on_shed is not None:
                self.on_shed(scope["path"], reason, waited + time.perf_counter() - started_at)
            if reason != "client_gone":  # nobody is left to read an answer
                await _answer_overloaded(scope, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            controller.release()


def _waited_for_the_loop(arrival: dict[str, Any] | None) -> float:
    """Seconds since the HTTP protocol created this request's task (the
    ``ARRIVAL_EXTENSION`` it stamps): under overload, requests wait for the event loop
    before any middleware sees them, a wait admission must bound too. 0 when the
    server stamps no arrival (another server, a test client)."""
    if not arrival:
        return 0.0
    return max(0.0, asyncio.get_running_loop().time() - arrival["loop_time"])


async def _answer_overloaded(scope: Scope, send: Send) -> None:
    body = error_body(OVERLOADED, v2=is_v2_path(route_path(scope)))
    await send(
        {
            "type": "http.response.start",
            "status": OVERLOADED.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in error_headers(OVERLOADED).items()),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
