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

If a merged run fails, each request is re-run alone, so one bad request gets its
own error and never poisons the others.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

Runner = Callable[[NDArray[Any]], NDArray[Any]]


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
    """Merges concurrent ``run`` calls for one model (same sample shape and dtype).

    ``runner`` maps a batch (n, ...) to outputs (n, ...), row i of the output
    belonging to row i of the input (an ONNX classifier's logits do). Thread-safe;
    no thread of its own: callers take turns leading.
    """

    def __init__(self, runner: Runner, *, max_delay_s: float, max_batch: int) -> None:
        if max_delay_s < 0 or max_batch < 1:
            raise ValueError("max_delay_s must be >= 0 and max_batch >= 1")
        self._runner = runner
        self._max_delay_s = max_delay_s
        self._max_batch = max_batch
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._leading = False  # a leader is gathering the queue into a batch
        self._running = 0  # merged runs in progress
        self._stats_lock = threading.Lock()
        self.runs = 0  # runner calls made (for tests and the bench)
        self.merged_runs = 0  # of which covered more than one request

    def run(self, batch: NDArray[Any]) -> NDArray[Any]:
        """The runner's output for ``batch``, possibly computed with other callers' rows."""
        if batch.shape[0] >= self._max_batch:
            return self._run_alone(batch)
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

    def _run_merged(self, taken: list[_Pending]) -> None:
        if len(taken) == 1:
            self._settle(taken[0])
            return
        try:
            merged = np.concatenate([item.batch for item in taken])
            output = self._call(merged)
        except Exception:
            # Find the culprit the slow way: each request alone gets its own outcome.
            for item in taken:
                self._settle(item)
            return
        with self._stats_lock:
            self.merged_runs += 1
        start = 0
        for item in taken:
            stop = start + item.batch.shape[0]
            item.result = output[start:stop]
            item.promoted = False
            item.done.set()
            start = stop

    def _settle(self, item: _Pending) -> None:
        try:
            item.result = self._call(item.batch)
        except Exception as exc:  # delivered to the caller that sent this batch
            item.error = exc
        item.promoted = False
        item.done.set()

    def _run_alone(self, batch: NDArray[Any]) -> NDArray[Any]:
        return self._call(batch)

    def _call(self, batch: NDArray[Any]) -> NDArray[Any]:
        with self._stats_lock:
            self.runs += 1
        return self._runner(batch)
