"""Where requests are prepared (media staging, decode, preprocessing, tokenisation): worker
processes by default, or threads of the server process (``--worker-threads``).

Why processes: in one process the event loop, the decode threads and the model thread share
one interpreter lock, so on 2 cores the server kept only ~1.4 of them busy
(docs/results/serve-load-2026-12-02.md). A worker process is spawned (never forked: the
server has torch threads by then) and builds in its initializer the request side of the
served model from the checkpoint folder, without the weights (``PrepareSpec``); it then runs
``ServedModel.prepare``, the code the threads run, with one torch thread, so its ``Job`` is
the in-process one bit for bit. The ``Job`` comes back as a plain pickle (its tensors are
small; no shared-memory handles that a dying worker could leak); an ``ApiError`` comes back
as itself, status and message unchanged.

A worker that dies (killed, out of memory, a crash inside a decoder) breaks its pool: the
requests it held or that were queued in the pool get ``503 worker_died`` (``Retry-After: 1``)
and the pool is replaced by a new one, whose workers start on the next request. A request
that finds the pool already broken goes to the new pool, since nothing of it ran. Workers
ignore SIGINT (the server shuts them down) and exit by themselves if the server process dies.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from stormvl.errors import UserError
from stormvl.serve.engine import Job, PrepareSpec, ServedModel
from stormvl.serve.schema import ApiError, ChatRequest

log = logging.getLogger("stormvl.serve")

# ----- inside a worker process -------------------------------------------------------------

_served: ServedModel | None = None
_failed: BaseException | None = None  # why this worker could not build its model copy


def _start_worker(spec: PrepareSpec) -> None:
    global _served, _failed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    parent = multiprocessing.parent_process()
    if parent is not None:  # no orphan if the server is killed outright
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    # a worker holds nothing to clean up: skipping the interpreter's teardown of torch and
    # transformers makes a stopping worker exit at once instead of seconds later
    atexit.register(_exit_now)
    torch.set_num_threads(1)  # the worker processes are the parallelism
    with contextlib.suppress(RuntimeError):  # already fixed in this process
        torch.set_num_interop_threads(1)
    try:
        _served = spec.build()
    except Exception as exc:  # noqa: BLE001 - reported by _check, with its message
        _failed = exc


def _exit_with(parent) -> None:
    parent.join()
    _exit_now()


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(0)


def _model() -> ServedModel:
    if _served is None:
        raise _failed or RuntimeError("this preparation worker has no model")
    return _served


def _check(hold_s: float) -> int:
    """This worker's pid once its model copy is built; held a moment, so that the other
    start-up checks go to the other workers rather than all to the first one up."""
    _model()
    time.sleep(hold_s)
    return os.getpid()


def _prepare(req: ChatRequest, job_id: str) -> bytes:
    return dumps(_model().prepare(req, job_id))


_NUMPY_DTYPES = {torch.float32, torch.float64, torch.float16, torch.int64, torch.int32,
                 torch.int16, torch.int8, torch.uint8, torch.bool}


class _Pickler(pickle.Pickler):
    """Plain CPU tensors as numpy arrays, rebuilt with ``torch.from_numpy`` (same dtype, same
    bytes). Why: torch's own tensor pickle is read back through ``torch.load``, which cost
    the server's event loop 0.18 ms a request in Python (numpy's: 0.03 ms) while holding
    the interpreter lock the model thread needs (at 16 clients the event loop's thread ran
    0.3 cores' worth, the model thread only 0.5)."""

    def reducer_override(self, obj):
        if type(obj) is torch.Tensor and obj.device.type == "cpu" and not obj.requires_grad \
                and obj.dtype in _NUMPY_DTYPES:
            return torch.from_numpy, (obj.numpy(),)
        return NotImplemented


def dumps(obj) -> bytes:
    """``pickle.dumps`` with tensors sent as numpy arrays (``_Pickler``)."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


# ----- in the server -----------------------------------------------------------------------


class Preparers:
    """``workers`` spawned processes (or threads, ``threads=True``) preparing requests."""

    def __init__(self, served: ServedModel, workers: int, threads: bool = False):
        self.served, self.workers, self.threads = served, workers, threads
        self.restarts = 0  # pools replaced after a worker died
        self.ready_pids: set[int] = set()  # the workers that answered start()
        self._closed = False
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self):
        if self.threads:
            return ThreadPoolExecutor(self.workers, thread_name_prefix="stormvl-decode")
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(self.served.spec,))

    def start(self) -> None:
        """Start every worker process and wait until each has built its model copy, so a
        checkpoint the workers cannot load fails the server's start (with the workers'
        error), not its first requests, and ``/ready`` means no worker is still starting
        (a worker's start costs seconds of CPU that would otherwise land on the first
        requests).

        Raises:
            UserError: a worker process died while starting (or what building its copy
                raised, as it was raised).
        """
        if self.threads:
            return
        try:
            while len(self.ready_pids) < self.workers:  # each worker, not the first up N times
                futures = [self._pool.submit(_check, 0.02) for _ in range(self.workers)]
                self.ready_pids |= {f.result() for f in futures}
        except BrokenProcessPool:
            raise UserError("a request-preparation worker process died while starting (its "
                            "output is above); --worker-threads prepares without worker "
                            "processes") from None

    async def prepare(self, req: ChatRequest, job_id: str) -> Job:
        """``ServedModel.prepare`` off the event loop.

        Raises:
            ApiError: the request's own (400s), or 503 when its worker died / the server
                is shutting down.
        """
        if self.threads:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self.served.prepare, req, job_id)
        return pickle.loads(await self.call(_prepare, req, job_id))

    async def call(self, fn, *args):
        """``fn(*args)`` in a worker process (``fn`` importable there)."""
        if self._closed:
            raise _shutting_down()
        pool = self._pool
        try:
            try:
                future = pool.submit(fn, *args)
            except BrokenProcessPool:  # broken before this call: nothing of it ran
                pool = self._renew(pool)
                future = pool.submit(fn, *args)
        except RuntimeError:  # shut down meanwhile (BrokenProcessPool is one too)
            raise _shutting_down() from None
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._renew(pool)
            raise ApiError(503, "the worker process preparing this request died (new workers "
                           "are started); retry the request", None, "unavailable_error",
                           "worker_died", {"Retry-After": "1"}) from None

    def _renew(self, broken):
        with self._lock:
            if self._pool is broken and not self._closed:
                log.warning("a request-preparation worker process died; starting new workers")
                broken.shutdown(wait=False)  # its other workers are already terminated
                self._pool = self._new_pool()
                self.restarts += 1
            return self._pool

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the workers: queued work is dropped; a worker still busy (with a request
        that timed out mid-decode) gets ``grace_s`` seconds, then is terminated, so no
        worker outlives the server."""
        with self._lock:
            self._closed = True
            pool = self._pool
        # ProcessPoolExecutor's own table of its processes (private, but there since 3.2)
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.terminate()
                p.join(1.0)


def _shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", None, "unavailable_error",
                    "shutting_down", {"Retry-After": "1"})
