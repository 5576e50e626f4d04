"""Adaptive micro-batching: concurrent calls to one model gathered into one ONNX run.

Request handlers run in worker threads and call ``AdaptiveBatcher.run(batch)``,
which blocks until the rows of *that* batch come back. The first caller to find
no batch forming becomes its leader: it waits while the model is busy with an
earlier batch, for at most ``max_delay_s`` and until ``max_batch`` rows are
queued, then runs everything queued as one call and hands each caller its own
slice. A caller that finds the model idle runs at once, so batching adds no
latency at low load (the adaptive part); under load, batches grow to what
arrives while the previous one runs (as Triton's and MLServer's batchers do,
bounded by a delay and a size).

Requests answered on the event loop (the service's usual path) do not block a
thread for this: they await ``LoopGatherer.run``, which queues their batches and
runs them merged, by the same rules, on threads of the model's own, so the loop
decodes, validates and defends other requests while the model computes.

Models too cheap for that hand-off still merge the requests that reach them in the
same turn of the event loop (``LoopCoalescer``): under load, a turn runs every request
whose bytes arrived since the last, and their calls become one, made on the loop itself.

If a merged run fails, each request is re-run alone, so one bad request gets its
own error and never poisons the others.

Gathering only pays when a call has a fixed cost worth sharing: merging k requests
saves (k - 1) times the model's fixed per-call cost, and costs every request a
hand-off between threads. So the batcher times every call it makes and keeps a
running fit t(n) = fixed + per_row * n (``CallCost``); it gathers only while the
fitted fixed cost is at least ``min_fixed_cost_s``, and otherwise runs each request
at once, alone, with no coordination (a timed call and a few float updates). A
model of 10-40 us a call (the shipped MLP) is never gathered; a small CNN whose
call costs a millisecond, mostly per call, is; the MLP's calls are coalesced instead.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import NDArray

Runner = Callable[[NDArray[Any]], NDArray[Any]]
Outcome = NDArray[Any] | Exception
"""A batch's rows of the runner's output, or what running it raised."""

MIN_FIXED_COST_S = 0.5e-3
"""Gather only for a model whose fixed cost per call is at least this. Moving a request
to a worker thread, waking it with its rows and taking the GIL back costs a few hundred
microseconds here (micro-batching the 30 us MLP that way ran at 0.55x); merging must
save more than that per request it merges."""

WARM_UP_CALLS = 4
"""Calls a batcher makes alone, timing them, before it may start gathering: a session's
first calls in a process, and in each new thread, pay one-time costs."""

_DECAY = 0.02  # the slope fit's memory: about the last 1 / _DECAY calls
_WINDOW = 16  # the fixed cost is a low quantile over this many recent calls
_MIN_ROWS_VARIANCE = 0.25  # batch sizes spread this much (rows^2) before a slope is fitted


class CallCost:
    """A running estimate of a model's call time t(n) = fixed + per_row * n.

    The slope is a least-squares fit over exponentially decayed sums (recent calls
    count most); the fixed cost is the lower quartile of t - per_row * n over the last
    ``_WINDOW`` calls: timing noise mostly adds (cache misses, first calls, interrupts),
    so a low quantile is robust to it (and to a slope a little off) and still follows
    a change.
    While every call seen has had the same size the slope is unknown and ``fixed_s``
    an upper bound (as if no part of a call grew with rows). Not thread-safe: its
    owner serialises ``observe``.
    """

    def __init__(self, *, decay: float = _DECAY, window: int = _WINDOW) -> None:
        if not 0 < decay <= 1 or window < 1:
            raise ValueError("decay must be in (0, 1] and window >= 1")
        self._keep = 1.0 - decay
        self._weight = 0.0
        self._rows = 0.0
        self._rows_sq = 0.0
        self._seconds = 0.0
        self._rows_seconds = 0.0
        self._recent: deque[tuple[int, float]] = deque(maxlen=window)
        self.calls = 0
        self.per_row_s: float | None = None
        """The fitted cost of one more row; None until batch sizes have varied."""

    def observe(self, rows: int, seconds: float) -> None:
        """Fold in one call of ``rows`` rows that took ``seconds``."""
        self.calls += 1
        self._recent.append((rows, seconds))
        keep = self._keep
        self._weight = self._weight * keep + 1.0
        self._rows = self._rows * keep + rows
        self._rows_sq = self._rows_sq * keep + rows * rows
        self._seconds = self._seconds * keep + seconds
        self._rows_seconds = self._rows_seconds * keep + rows * seconds
        mean_rows = self._rows / self._weight
        variance = self._rows_sq / self._weight - mean_rows * mean_rows
        if variance >= _MIN_ROWS_VARIANCE:
            covariance = (
                self._rows_seconds / self._weight - mean_rows * self._seconds / self._weight
            )
            self.per_row_s = max(0.0, covariance / variance)

    @property
    def fixed_s(self) -> float:
        """The fixed cost of a call (0 before any call)."""
        if not self._recent:
            return 0.0
        per_row = self.per_row_s or 0.0
        fixed = sorted(seconds - per_row * rows for rows, seconds in self._recent)
        return max(0.0, fixed[len(fixed) // 4])


class _Pending:
    """One caller's batch, and where its outcome lands."""

    __slots__ = ("batch", "done", "error", "promoted", "result")

    def __init__(self, batch: NDArray[Any]) -> None:
        self.batch = batch
        self.done = threading.Event()
        self.promoted = False  # set when the caller must lead the next batch
        self.result: NDArray[Any] | None = None
        self.error: BaseException | None = None

    def outcome(self) -> NDArray[Any]:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class AdaptiveBatcher:
    """Merges concurrent ``run`` calls for one model (same sample shape and dtype),
    when the model's measured cost says merging pays (``gathering``).

    ``runner`` maps a batch (n, ...) to outputs (n, ...), row i of the output
    belonging to row i of the input (an ONNX classifier's logits do). Thread-safe;
    no thread of its own: callers take turns leading. ``clock`` times the runner's
    calls: by default the calling thread's CPU time, which a preempted thread or one
    waiting for the GIL does not accrue, so a loaded machine does not make a cheap
    model look expensive (onnxruntime runs a one-thread session in the caller). Tests
    pass their own.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        max_delay_s: float,
        max_batch: int,
        min_fixed_cost_s: float = MIN_FIXED_COST_S,
        clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if max_delay_s < 0 or max_batch < 1 or min_fixed_cost_s < 0:
            raise ValueError("max_delay_s and min_fixed_cost_s must be >= 0, max_batch >= 1")
        self._runner = runner
        self._max_delay_s = max_delay_s
        self._max_batch = max_batch
        self._min_fixed_cost_s = min_fixed_cost_s
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._leading = False  # a leader is gathering the queue into a batch
        self._running = 0  # merged runs in progress
        self._stats_lock = threading.Lock()
        self.cost = CallCost()
        self.gathering = False
        """Whether new calls queue to be merged; else each runs at once, alone. Starts
        False: the first ``WARM_UP_CALLS`` run alone and are timed."""
        self.runs = 0  # runner calls made (for tests and the bench)
        self.merged_runs = 0  # of which covered more than one request

    def run(self, batch: NDArray[Any]) -> NDArray[Any]:
        """The runner's output for ``batch``, possibly computed with other callers' rows."""
        if not self.gathering or batch.shape[0] >= self._max_batch:
            return self._call(batch)
        pending = _Pending(batch)
        with self._cond:
            self._queue.append(pending)
            self._queued_rows += batch.shape[0]
            lead = not self._leading
            if lead:
                self._leading = True
            elif self._queued_rows >= self._max_batch:
                self._cond.notify_all()  # the leader's batch is full: go now
        if not lead:
            pending.done.wait()
            if not pending.promoted:
                return pending.outcome()
            # Promoted: still queued (at the head), and no one else will take it.
            pending.done.clear()
        self._lead()
        pending.done.wait()
        return pending.outcome()

    def _lead(self) -> None:
        """Gather the queue (this caller's batch is at its head), then run it."""
        with self._cond:
            deadline = time.monotonic() + self._max_delay_s
            while self._running and self._queued_rows < self._max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken: list[_Pending] = []
            rows = 0
            while self._queue and (
                not taken or rows + self._queue[0].batch.shape[0] <= self._max_batch
            ):
                item = self._queue.popleft()
                taken.append(item)
                rows += item.batch.shape[0]
            self._queued_rows -= rows
            if self._queue:
                # Hand the lead to the oldest caller left behind; it gathers while we run.
                successor = self._queue[0]
                successor.promoted = True
                successor.done.set()
            else:
                self._leading = False
            self._running += 1
        try:
            self._run_merged(taken)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def run_group(
        self, batches: list[NDArray[Any]], deliver: Callable[[int, Outcome], None]
    ) -> None:
        """Run ``batches`` as one merged call and ``deliver(i, outcome)`` each batch's
        output (its rows of the merged output), or the exception running it raised. If
        a merged run fails, each batch is re-run alone and delivered as soon as it is
        done, so one bad request gets its own error and never poisons the others."""
        if len(batches) > 1:
            try:
                output = self._call(np.concatenate(batches))
            except Exception:
                pass  # find the culprit the slow way, below
            else:
                with self._stats_lock:
                    self.merged_runs += 1
                start = 0
                for i, batch in enumerate(batches):
                    stop = start + batch.shape[0]
                    deliver(i, output[start:stop])
                    start = stop
                return
        for i, batch in enumerate(batches):
            try:
                outcome: Outcome = self._call(batch)
            except Exception as exc:  # delivered to the caller that sent this batch
                outcome = exc
            deliver(i, outcome)

    def _run_merged(self, taken: list[_Pending]) -> None:
        def deliver(i: int, outcome: Outcome) -> None:
            item = taken[i]
            if isinstance(outcome, Exception):
                item.error = outcome
            else:
                item.result = outcome
            item.promoted = False
            item.done.set()

        self.run_group([item.batch for item in taken], deliver)

    def _call(self, batch: NDArray[Any]) -> NDArray[Any]:
        started = self._clock()
        output = self._runner(batch)
        elapsed = self._clock() - started
        with self._stats_lock:
            self.runs += 1
            self.cost.observe(batch.shape[0], elapsed)
            self._decide(elapsed)
        return output

    def _decide(self, elapsed: float) -> None:
        """Gather while the fixed cost pays for it, with hysteresis (start at the
        threshold, stop below half of it) so a noisy estimate does not flap."""
        if self.cost.calls < WARM_UP_CALLS:
            return
        if not self.gathering and elapsed < self._min_fixed_cost_s:
            return  # the fixed cost is at most this call's time: no estimate needed
        fixed = self.cost.fixed_s
        if self.gathering:
            self.gathering = fixed >= self._min_fixed_cost_s / 2
        else:
            self.gathering = fixed >= self._min_fixed_cost_s


def _settle(future: asyncio.Future[NDArray[Any]], outcome: Outcome) -> None:
    """Hand a waiting request its rows, or its error; not one that was cancelled (its
    client went away)."""
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class LoopGatherer:
    """Gathers the batches of requests answered on an event loop into merged calls of
    an `AdaptiveBatcher`, run on threads of their own (at most ``max_running`` calls at
    once), so the loop reads, decodes and defends other requests while the model runs
    (onnxruntime releases the GIL while it computes).

    A batch that finds the model idle goes at once; one that finds it busy waits for
    the running call to end (its batch is then what queued meanwhile, up to
    ``max_batch`` rows), or for ``max_delay_s``, when it starts a call beside the running
    one if ``max_running`` allows. Requests wait on futures, not threads: no thread per
    request, no lock convoy. Use from one event loop only (see `Predictor`).
    """

    def __init__(
        self,
        batcher: AdaptiveBatcher,
        *,
        max_delay_s: float,
        max_batch: int,
        max_running: int = 2,
    ) -> None:
        if max_delay_s < 0 or max_batch < 1 or max_running < 1:
            raise ValueError("max_delay_s must be >= 0, max_batch and max_running >= 1")
        self._batcher = batcher
        self._max_delay_s = max_delay_s
        self._max_batch = max_batch
        self._max_running = max_running
        self._executor = ThreadPoolExecutor(max_running, thread_name_prefix="dynanoise-model")
        self._queue: deque[tuple[NDArray[Any], asyncio.Future[NDArray[Any]]]] = deque()
        self._queued_rows = 0
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, batch: NDArray[Any]) -> NDArray[Any]:
        """The runner's output for ``batch``, possibly computed with other requests' rows."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[NDArray[Any]] = loop.create_future()
        self._queue.append((batch, future))
        self._queued_rows += batch.shape[0]
        if not self._running or self._queued_rows >= self._max_batch:
            self._dispatch(loop)
        elif self._timer is None and self._max_delay_s > 0:
            self._timer = loop.call_later(self._max_delay_s, self._waited, loop)
        return await future

    def close(self) -> None:
        """Let the model threads end once idle (queued calls still finish)."""
        self._executor.shutdown(wait=False)

    def _waited(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._queue:
            self._dispatch(loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._running >= self._max_running:
            return  # the next call to end takes the queue
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        taken: list[tuple[NDArray[Any], asyncio.Future[NDArray[Any]]]] = []
        rows = 0
        while self._queue and (not taken or rows + self._queue[0][0].shape[0] <= self._max_batch):
            item = self._queue.popleft()
            taken.append(item)
            rows += item[0].shape[0]
        self._queued_rows -= rows
        self._running += 1
        call = loop.run_in_executor(self._executor, self._outcomes, [b for b, _ in taken])
        call.add_done_callback(lambda done: self._finished(loop, taken, done))

    def _outcomes(self, batches: list[NDArray[Any]]) -> list[Outcome]:
        """On a model thread: every batch's outcome, merged when it can be."""
        outcomes: list[Outcome] = [RuntimeError("no outcome")] * len(batches)

        def deliver(i: int, outcome: Outcome) -> None:
            outcomes[i] = outcome

        self._batcher.run_group(batches, deliver)
        return outcomes

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        taken: list[tuple[NDArray[Any], asyncio.Future[NDArray[Any]]]],
        done: asyncio.Future[list[Outcome]],
    ) -> None:
        self._running -= 1
        try:
            outcomes = done.result()
        except BaseException as exc:  # not expected: run_group delivers every Exception
            error = exc if isinstance(exc, Exception) else RuntimeError("model call cancelled")
            outcomes = [error] * len(taken)
        for (_, future), outcome in zip(taken, outcomes, strict=True):
            _settle(future, outcome)
        if self._queue:
            self._dispatch(loop)


class RequestBacklog:
    """The requests of this process that the event loop holds for its current turn:
    those whose task is created but not yet started, and those waiting in a
    `LoopCoalescer`'s group for their model's call.

    The HTTP protocol counts ``created`` when it creates a request's task and
    ``started`` when that task first runs (`service.api.http_limits`); coalescers count
    ``grouped``. A request that reaches its model while others wait can merge its call
    with theirs. Plain integers: one event loop per process updates them.
    """

    __slots__ = ("created", "grouped", "started")

    def __init__(self) -> None:
        self.created = 0
        self.started = 0
        self.grouped = 0

    @property
    def waiting(self) -> int:
        """Requests created and not yet started."""
        return self.created - self.started

    @property
    def busy(self) -> bool:
        """Whether another request may share a model call made now."""
        return self.created != self.started or self.grouped > 0


REQUEST_BACKLOG = RequestBacklog()
"""This process's backlog: its one event loop serves every connection."""


class LoopCoalescer:
    """Merges into one call the batches of requests that reach a cheap model in the same
    turn of the event loop, and runs it on the loop: no thread, no wait for a timer.

    A model too cheap to gather on threads (`AdaptiveBatcher.gathering` is False) still
    has a fixed cost per call that memory makes large in a loaded server: its weights
    leave the caches while the loop serves other requests between two calls (the
    shipped MLP: about 15 us a call run back to back, 60-90 us in a loaded process;
    bench/micro-timings.md). When requests are waiting to start (`RequestBacklog`), the
    first to reach the model opens a group and schedules its run for the loop's next
    turn; the waiting requests run up to their model step and join; the group then runs
    as one call (`AdaptiveBatcher.run_group`: a failed merge re-runs each batch alone).
    A request that finds no group open and nobody waiting runs alone, at once, with no
    await at all (`joins`). Use from one event loop only (see `Predictor`).
    """

    def __init__(
        self, batcher: AdaptiveBatcher, *, max_batch: int, backlog: RequestBacklog
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._batcher = batcher
        self._max_batch = max_batch
        self._backlog = backlog
        self._group: list[tuple[NDArray[Any], asyncio.Future[NDArray[Any]]]] | None = None
        self._rows = 0

    def joins(self, rows: int) -> bool:
        """Whether a batch of ``rows`` rows should await `run` (a group is open, or
        requests wait to start that may join one) rather than run alone at once."""
        if rows >= self._max_batch:
            return False
        if self._group is not None:
            return True
        return self._backlog.waiting > 0

    async def run(self, batch: NDArray[Any]) -> NDArray[Any]:
        """The runner's output for ``batch``, computed with the other batches of its group."""
        loop = asyncio.get_running_loop()
        if self._group is not None and self._rows + batch.shape[0] > self._max_batch:
            self._run_group()  # full: it runs now, and this batch opens the next
        if self._group is None:
            self._group = []
            self._rows = 0
            loop.call_soon(self._run_group)
        future: asyncio.Future[NDArray[Any]] = loop.create_future()
        self._group.append((batch, future))
        self._rows += batch.shape[0]
        self._backlog.grouped += 1
        return await future

    def _run_group(self) -> None:
        # Scheduled once per group; a group that filled up ran early, and its callback
        # then runs the group opened after it, which was waiting for this same turn.
        group, self._group = self._group, None
        if not group:
            return
        self._backlog.grouped -= len(group)
        self._batcher.run_group(
            [batch for batch, _ in group], lambda i, outcome: _settle(group[i][1], outcome)
        )
