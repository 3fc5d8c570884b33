"""Where the server's work runs: request preparation (media staging, decode, preprocessing,
tokenisation) and the engine calls.

By default each runs in spawned processes (``procs.py``: why processes, why a pipe each):

- ``Preparers``: ``--workers`` processes, each holding the request side of the served
  model, built from the checkpoint folder without the weights (``PrepareSpec``); they run
  ``ServedModel.prepare``, with one torch thread, so their ``Job`` is the in-process one
  bit for bit.
- ``EngineProcess``: one process holding the weights; it runs ``ServedModel.run`` on each
  batch the batcher forms, with the server process's torch thread count, on its device.
  The server process keeps a weightless copy (names, limits, the tokenizer for streaming).

``--single-process`` runs both in threads of the server process instead (``Preparers``
with ``threads=True`` and ``EngineThread``): one interpreter lock, slower under load, but
the loaded model is the server's own object (tests reach into it; a debugger sees it).

A process that dies (killed, out of memory, a crash inside a decoder) costs the request(s)
it held a ``503`` (``worker_died`` / ``engine_died``, ``Retry-After: 1``) and is replaced;
the others go on. A request that finds a process already dead goes to another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from stormvl.errors import UserError
from stormvl.serve.engine import Answer, Job, PrepareSpec, ServedModel
from stormvl.serve.procs import Child, ChildDied, Pool
from stormvl.serve.schema import ApiError, ChatRequest

log = logging.getLogger("stormvl.serve")

# ----- inside a child process ---------------------------------------------------------------

_served: ServedModel | None = None  # a worker's weightless copy, or the engine's loaded model


def _start_worker(spec: PrepareSpec) -> None:
    global _served
    _served = spec.build()


def _start_engine(load: Callable[[], ServedModel]) -> None:
    global _served
    from stormvl.serve.server import log_to_stderr

    log_to_stderr()  # the row-by-row retry's log lines
    _served = load()


def _prepare(req: ChatRequest, job_id: str) -> Job:
    return _served.prepare(req, job_id)


def _run(jobs: list[Job]) -> list[Answer | ApiError]:
    return _served.run(jobs)


def _spec() -> PrepareSpec:
    return _served.spec


# ----- in the server ------------------------------------------------------------------------


def _died(what: str, code: str) -> ApiError:
    return ApiError(503, f"the {what} died (a new one is started); retry the request", None,
                    "unavailable_error", code, {"Retry-After": "1"})


class Preparers:
    """``workers`` spawned processes (or threads, ``threads=True``) preparing requests."""

    def __init__(self, served: ServedModel, workers: int, threads: bool = False):
        self.served, self.threads = served, threads
        self.ready_pids: set[int] = set()  # the worker processes that answered start()
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="stormvl-decode") \
            if threads else None
        spec = served.spec
        self._pool = None if threads else Pool(
            lambda i: Child(f"preparation worker {i}", _start_worker, (spec,)), workers)

    @property
    def restarts(self) -> int:
        """Worker processes replaced after one died."""
        return 0 if self._pool is None else self._pool.restarts

    async def start(self) -> None:
        """Start every worker process and wait until each has built its model copy, so a
        checkpoint the workers cannot load fails the server's start (with the workers'
        error), and ``/ready`` means no worker is still starting (a worker's start costs
        seconds of CPU that would otherwise land on the first requests).

        Raises:
            UserError: a worker process died while starting (or what building its copy
                raised, as it was raised).
        """
        if self._pool is None:
            return
        try:
            self.ready_pids = await self._pool.start()
        except ChildDied:
            raise UserError("a request-preparation worker process died while starting (its "
                            "output is above); --single-process prepares without worker "
                            "processes") from None

    async def prepare(self, req: ChatRequest, job_id: str) -> Job:
        """``ServedModel.prepare`` off the event loop.

        Raises:
            ApiError: the request's own (400s), or 503 when its worker died / the server
                is shutting down.
        """
        if self._threads is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._threads, self.served.prepare, req, job_id)
        return await self.call(_prepare, req, job_id)

    async def call(self, fn, *args):
        """``fn(*args)`` in a worker process (``fn`` importable there)."""
        try:
            return await self._pool.call(fn, *args)
        except ChildDied:
            raise _died("worker process preparing this request", "worker_died") from None

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the workers (a busy one gets ``grace_s`` seconds, then is terminated)."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        else:
            self._pool.close(grace_s)


class EngineProcess:
    """The model in its own process: ``load()`` runs there (so ``load`` must pickle: a
    module-level function or a ``functools.partial`` of one)."""

    def __init__(self, load: Callable[[], ServedModel]):
        threads = torch.get_num_threads()  # the server's setting (``torch.set_num_threads``)
        self._pool = Pool(lambda i: Child("engine process", _start_engine, (load,), threads), 1)

    @property
    def up(self) -> bool:
        """False while a replacement of a dead engine process loads the model."""
        return self._pool.up

    @property
    def restarts(self) -> int:
        return self._pool.restarts

    async def start(self) -> PrepareSpec:
        """Load the model in the engine process.

        Returns:
            how to build its weightless copy (for the server process and the workers).

        Raises:
            what loading raised (a ``UserError`` for a checkpoint that cannot be served);
            UserError: the process died while loading.
        """
        try:
            await self._pool.start()
            return await self._pool.call(_spec)
        except ChildDied:
            raise UserError("the engine process died while loading the model (its output is "
                            "above)") from None

    async def run(self, jobs: list[Job]) -> list[Answer | ApiError]:
        """One engine call; every row gets 503 ``engine_died`` if the process dies in it."""
        try:
            return await self._pool.call(_run, jobs)
        except ChildDied:
            return [_died("engine process running this request", "engine_died")] * len(jobs)

    def close(self, grace_s: float = 5.0) -> None:
        self._pool.close(grace_s)


class EngineThread:
    """The model in the server process, engine calls on one dedicated thread."""

    up = True
    restarts = 0

    def __init__(self, served: ServedModel):
        self.served = served
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="stormvl-model")

    async def run(self, jobs: list[Job]) -> list[Answer | ApiError]:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.served.run,
                                                                jobs)

    def close(self, grace_s: float = 5.0) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
