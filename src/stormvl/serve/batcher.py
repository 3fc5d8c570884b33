"""Admission and batching: concurrent requests grouped into one engine call.

A request is *admitted* (or refused with 429 when ``max_queue`` requests are already in the
server), *prepared* in the worker pool, then *submitted*. The batching loop takes the oldest
submitted job and the jobs that can share its engine call (same ``Job.key``), and starts the
call when any of these holds:

- ``max_batch`` jobs are ready;
- ``max_wait`` seconds have passed since the oldest was submitted;
- no other admitted request is still being prepared (nobody could join: a lone request
  does not wait for company that is not coming).

Engine calls run one at a time, awaited (in the engine process, or on the model thread
with ``--single-process``), so the event loop keeps accepting and answering while the model
works; requests arriving meanwhile form the next batch. A client that goes away
(disconnect, timeout) cancels its future: a job not yet in a call is dropped, and its slot
is freed at once either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from stormvl.serve.metrics import Metrics
from stormvl.serve.schema import ApiError


@dataclass
class _Pending:
    job: Any  # engine.Job (anything with .key)
    future: asyncio.Future
    submitted: float = field(default_factory=time.monotonic)


class Batcher:
    """The bounded queue in front of the engine.

    Args:
        run: jobs -> one result per job (``Answer`` or ``ApiError``), awaited; one call at
            a time.
        max_batch: jobs per engine call at most.
        max_wait_s: how long the oldest ready job waits for others to join.
        max_queue: requests admitted at once (preparing, waiting or running); past it 429.
    """

    def __init__(self, run: Callable[[list], Awaitable[list]], max_batch: int, max_wait_s: float,
                 max_queue: int, metrics: Metrics):
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.max_queue, self.metrics = max_queue, metrics
        self.admitted = 0  # requests in the server (slots taken)
        self.preparing = 0  # admitted, not yet submitted
        self.calls = 0  # engine calls made
        self.running = 0  # jobs in the current engine call
        self.closing = False
        self._ready: list[_Pending] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    # ----- the request side -------------------------------------------------------------

    def admit(self) -> None:
        """Take a slot, or refuse: 429 with Retry-After when full, 503 while shutting down."""
        if self.closing:
            raise ApiError(503, "the server is shutting down", None, "unavailable_error",
                           "shutting_down", {"Retry-After": "1"})
        if self.admitted >= self.max_queue:
            raise ApiError(429, f"the server is busy ({self.admitted} requests queued, the "
                           "limit is --max-queue); retry shortly", None, "rate_limit_error",
                           "queue_full", {"Retry-After": "1"})
        self.admitted += 1
        self.preparing += 1
        self._gauge()

    def prepared(self) -> None:
        """The admitted request left preparation (submitted next, or failed)."""
        self.preparing -= 1
        self._wake()

    def release(self) -> None:
        """Free the slot (answered, failed, timed out or disconnected)."""
        self.admitted -= 1
        self._gauge()

    async def submit(self, job) -> Any:
        """Queue a prepared job and wait for its result (cancel the wait to drop the job)."""
        p = _Pending(job, asyncio.get_running_loop().create_future())
        self._ready.append(p)
        self._wake()
        return await p.future

    # ----- the loop ---------------------------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()
        self._gauge()

    def _gauge(self) -> None:
        self.metrics.queue_depth.set(max(0, self.admitted - self.running))
        self.metrics.running.set(self.running)

    async def _wait_change(self, timeout: float | None = None) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _compatible(self) -> list[_Pending]:
        self._ready = [p for p in self._ready if not p.future.done()]  # clients gone
        if not self._ready:
            return []
        key = self._ready[0].job.key
        return [p for p in self._ready if p.job.key == key][: self.max_batch]

    async def _next_batch(self) -> list[_Pending]:
        while True:
            while not self._compatible():
                await self._wait_change()
            deadline = self._ready[0].submitted + self.max_wait_s
            while len(self._compatible()) < self.max_batch and self.preparing > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await self._wait_change(left)
            batch = self._compatible()
            if batch:
                taken = {id(p) for p in batch}
                self._ready = [p for p in self._ready if id(p) not in taken]
                return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            now = time.monotonic()
            for p in batch:
                self.metrics.queue_wait.observe(now - p.submitted)
            self.metrics.batch_size.observe(len(batch))
            self.metrics.engine_calls.inc()
            self.calls += 1
            self.running = len(batch)
            self._gauge()
            try:
                results = await self.run([p.job for p in batch])
            except Exception as exc:  # run() isolates rows itself; this is a last resort
                results = [ApiError(500, f"engine error ({type(exc).__name__})", None,
                                    "server_error", "engine_error")] * len(batch)
            finally:
                self.running = 0
                self._gauge()
            seen = set()
            for res in results:  # one timing per engine call (rows share it)
                t = getattr(res, "timings", None)
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    for phase, seconds in t.items():
                        self.metrics.phase.labels(phase).observe(seconds)
            for p, res in zip(batch, results, strict=True):
                if not p.future.done():  # a client may have gone meanwhile
                    p.future.set_result(res)

    async def close(self, timeout_s: float) -> None:
        """Refuse new requests, let admitted ones finish for up to ``timeout_s``, then fail
        what is left with 503."""
        self.closing = True
        deadline = time.monotonic() + timeout_s
        while self.admitted > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
        for p in self._ready:
            if not p.future.done():
                p.future.set_result(ApiError(503, "the server shut down before this request "
                                             "ran", None, "unavailable_error", "shutting_down"))
        self._ready.clear()
