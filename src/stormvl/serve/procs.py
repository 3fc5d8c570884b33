"""Helper processes of the server, each driven from the event loop over its own pipe.

Why processes: in one process the event loop, the decoders and the model share one
interpreter lock. At 16 clients on 2 cores the model thread got ~0.6 of a core and each
engine call took twice its time alone (docs/results/serve-load-2026-12-03.md). vLLM's V1
engine makes the same split for the same reason (its API server and its EngineCore are
separate processes).

Why pipes per process, not ``concurrent.futures.ProcessPoolExecutor``: a call through
that pool crosses two helper threads of the server (its queue feeder and its result
manager) each way: 0.35 ms for a small call on an idle machine, 0.9 ms for a 200 KB job,
against 0.06 / 0.28 ms for a pipe read by the event loop itself; under load every thread
hop also waits for the interpreter lock. Here the event loop writes the call, is woken when
the answer is readable, and reads it; the server process runs no other thread.

A child is spawned (never forked: the server may hold torch threads and CUDA), runs its
``init`` once, then answers calls ``fn(*args)`` one at a time. Results and exceptions go
back pickled (tensors as numpy arrays, ``dumps``); an exception that cannot be pickled
comes back as a ``RuntimeError`` naming it. A child that dies is seen as its pipe's end
(``ChildDied``); ``Pool`` replaces it. Children ignore SIGINT (the server stops them),
exit when their pipe closes, and exit by themselves if the server process dies.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import io
import logging
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection

import torch

log = logging.getLogger("stormvl.serve")

# ----- pickling -----------------------------------------------------------------------------

_NUMPY_DTYPES = {torch.float32, torch.float64, torch.float16, torch.int64, torch.int32,
                 torch.int16, torch.int8, torch.uint8, torch.bool}


class _Pickler(pickle.Pickler):
    """Plain CPU tensors as numpy arrays, rebuilt with ``torch.from_numpy`` (same dtype, same
    bytes). Why: torch's own tensor pickle is read back through ``torch.load``, 0.18 ms of
    Python a request on the server's event loop against numpy's 0.03 ms."""

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


# ----- inside a child -----------------------------------------------------------------------


def _child_main(calls: Connection, replies: Connection, init: Callable, args: tuple,
                threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    parent = multiprocessing.parent_process()
    if parent is not None:  # no orphan if the server is killed outright
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    # a child holds nothing to clean up: skipping the interpreter's teardown of torch and
    # transformers makes a stopping child exit at once instead of seconds later
    atexit.register(_exit_now)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already fixed in this process
        torch.set_num_interop_threads(1)
    failed = None
    try:
        init(*args)
    except Exception as exc:  # noqa: BLE001 - every later call raises it, with its message
        failed = exc
    while True:
        try:
            call = calls.recv_bytes()
        except (EOFError, OSError):  # the server closed the pipe: stop
            _exit_now()
        name = "call"
        try:
            fn, fargs = pickle.loads(call)
            name = getattr(fn, "__name__", name)
            if failed is not None:
                raise failed
            reply = (True, fn(*fargs))
        except Exception as exc:  # noqa: BLE001 - the caller raises it
            reply = (False, exc)
        try:
            blob = dumps(reply)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
            blob = dumps((False, RuntimeError(f"{name}: {type(exc).__name__}: {exc}")))
        try:
            replies.send_bytes(blob)
        except OSError:
            _exit_now()


def _exit_with(parent) -> None:
    parent.join()
    _exit_now()


def _exit_now() -> None:
    # the finalizers that unregister semaphores from multiprocessing's resource tracker
    # (tqdm's progress bars make one), else it warns of a "leaked semaphore" at exit
    with contextlib.suppress(Exception):
        multiprocessing.util._run_finalizers(0)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(0)


def pid() -> int:
    """The child's pid (a call that checks the child is up: it raises the child's init error)."""
    return os.getpid()


# ----- in the server ------------------------------------------------------------------------


class ChildDied(Exception):
    """The child process ended (killed, out of memory, a crash in native code).

    ``ran``: whether the call may have reached it (False: it was dead before the call was
    sent, so nothing of the call ran and the call can go to another child).
    """

    def __init__(self, message: str, ran: bool):
        super().__init__(message)
        self.ran = ran


def _pipe() -> tuple[Connection, Connection]:
    """(read end, write end) of a pipe holding up to 1 MB: a batch of jobs crosses in a few
    writes (a 3 MB batch: 1.5 ms, against 2.5-8 ms through a socket pair, 6-9 ms through a
    default 64 KB pipe, each chunk waiting for the reader to wake)."""
    r, w = os.pipe()
    with contextlib.suppress(OSError, AttributeError):  # Linux only; the default elsewhere
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    return Connection(r, writable=False), Connection(w, readable=False)


class Child:
    """One spawned process: ``init(*args)`` once, then ``call``s one at a time.

    Args:
        threads: torch CPU threads in the child.
    """

    def __init__(self, name: str, init: Callable, args: tuple, threads: int = 1):
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        calls_r, self._calls = _pipe()
        self._replies, replies_w = _pipe()
        self.process = ctx.Process(target=_child_main,
                                   args=(calls_r, replies_w, init, args, threads), name=name,
                                   daemon=True)
        self.process.start()
        for end in (calls_r, replies_w):  # the child's ends live in the child only: its
            end.close()  # death reads as the end of its replies
        self.busy = False
        self.dead = False

    async def call(self, fn: Callable, *args):
        """``fn(*args)`` in the child (``fn`` importable there), awaited on the event loop.
        A cancelled call leaves its reply unread, so the child is closed (``Pool`` shields
        its calls instead: the child finishes, and the result is dropped).

        Raises:
            what ``fn`` raised; ``ChildDied``.
        """
        if self.busy or self.dead:
            raise RuntimeError(f"{self.name}: called while {'busy' if self.busy else 'dead'}")
        loop = asyncio.get_running_loop()
        self.busy = True
        try:
            try:
                self._calls.send_bytes(dumps((fn, args)))
            except OSError:
                self.dead = True
                raise ChildDied(f"{self.name} died", ran=False) from None
            readable = loop.create_future()
            fd = self._replies.fileno()
            loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            except asyncio.CancelledError:
                self.dead = True
                raise
            finally:
                loop.remove_reader(fd)
                if self.dead:  # cancelled: its reply would answer the next call
                    self.close()
            os.set_blocking(fd, True)  # uvloop makes a watched fd non-blocking
            try:  # readable: the child is writing its reply (or has exited)
                ok, value = pickle.loads(self._replies.recv_bytes())
            except (EOFError, OSError):
                self.dead = True
                raise ChildDied(f"{self.name} died", ran=True) from None
        finally:
            self.busy = False
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Close the pipes: an idle child exits at once, a busy one after its call."""
        self._calls.close()
        self._replies.close()

    def stop(self, deadline: float) -> None:
        """After ``close``: wait until ``deadline`` (monotonic), then terminate."""
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.exitcode is None:
            self.process.terminate()
            self.process.join(1.0)


class Pool:
    """``n`` children made by ``make(i)``, each taking one call at a time; a call waits for
    an idle child. A child that dies is replaced by a new one, which takes calls once it
    has answered a ``pid`` check (its ``init`` done; meanwhile the others take them).
    """

    def __init__(self, make: Callable[[int], Child], n: int):
        self._make, self.n = make, n
        self.children: list[Child | None] = [None] * n
        self.restarts = 0  # children replaced after one died
        self._revivals = 0  # replacements still starting
        self._idle: deque[Child] = deque()
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def up(self) -> bool:
        """Every child started and none being replaced."""
        return all(c is not None for c in self.children)

    async def start(self) -> set[int]:
        """Start every child and wait until each has run its ``init``.

        Returns:
            the children's pids.

        Raises:
            what an ``init`` raised; ``ChildDied`` (a child died while starting).
        """
        started = [self._make(i) for i in range(self.n)]
        try:
            pids = await asyncio.gather(*(c.call(pid) for c in started))
        except BaseException:
            for c in started:
                c.close()
            deadline = time.monotonic() + 1.0
            for c in started:
                c.stop(deadline)
            raise
        self.children = started
        self._idle.extend(started)
        self._changed.set()
        return set(pids)

    async def call(self, fn: Callable, *args):
        """``fn(*args)`` on the next idle child. Cancelling the wait leaves the call to
        finish in its child (the child is busy until then).

        Raises:
            what ``fn`` raised; ``ChildDied`` (its child died; a child found dead before
            the call reached it is replaced and the call goes to another).
        """
        while True:
            child = await self._take()
            task = asyncio.ensure_future(child.call(fn, *args))
            task.add_done_callback(lambda t, c=child: self._finished(c, t))
            try:
                return await asyncio.shield(task)
            except ChildDied as died:
                if died.ran:
                    raise

    async def _take(self) -> Child:
        while not self._idle:
            if self._closed:
                raise ChildDied("the server is shutting down", ran=True)
            if not any(self.children) and not self._revivals:
                raise ChildDied("no process could be started", ran=True)
            self._changed.clear()
            await self._changed.wait()
        return self._idle.popleft()

    def _finished(self, child: Child, task: asyncio.Task) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here: an abandoned call's error is nobody's
        if self._closed:
            return
        if child.dead or not child.process.is_alive():
            i = self.children.index(child)
            self.children[i] = None
            child.close()
            self.restarts += 1
            self._revivals += 1
            log.warning("%s died; starting a new one", child.name)
            asyncio.ensure_future(self._revive(i))
        else:
            self._idle.append(child)
        self._changed.set()

    async def _revive(self, i: int) -> None:
        try:
            child = self._make(i)
            await child.call(pid)
        except Exception as exc:  # noqa: BLE001 - logged; the slot stays empty
            log.error("the replacement process could not start: %s", exc)
            return
        finally:
            self._revivals -= 1
            self._changed.set()
        if self._closed:
            child.close()
            return
        self.children[i] = child
        self._idle.append(child)
        self._changed.set()

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the children: idle ones exit at once; a busy one (a request that timed out
        mid-decode) gets ``grace_s`` seconds, then is terminated, so none outlives the
        server. Called on the event loop (the pool's waiters are its futures), at shutdown:
        it blocks for as long as a busy child takes."""
        self._closed = True
        self._changed.set()
        live = [c for c in self.children if c is not None]
        for c in live:
            c.close()
        deadline = time.monotonic() + grace_s
        for c in live:
            c.stop(deadline)
