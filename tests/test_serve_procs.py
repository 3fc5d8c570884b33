"""The server's child processes (``stormvl.serve.procs``): calls and their errors cross the
pipes unchanged, two children work at once, a dead child is replaced and its call (if it
had not reached it) goes to another, an abandoned call finishes before its child takes the
next one, and every child is gone after ``close``. The children run this module's
functions (spawned: they import it)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from stormvl.serve.procs import Child, ChildDied, Pool

_state = {}


def _init(tag: str) -> None:
    if tag == "broken":
        raise ValueError("init failed: no such checkpoint")
    _state["tag"] = tag


def _tagged_pid(seconds: float = 0.0) -> tuple[str, int]:
    time.sleep(seconds)
    return _state["tag"], os.getpid()


def _fails() -> None:
    raise KeyError("messages[0]")


def _unpicklable():
    return lambda: None


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _pool(n: int, tag: str = "ok") -> Pool:
    return Pool(lambda i: Child(f"test child {i}", _init, (tag,)), n)


def _alive(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # reaped already
        return False


async def _until_up(pool: Pool) -> None:
    deadline = time.monotonic() + 60
    while not pool.up:
        assert time.monotonic() < deadline, "no replacement"
        await asyncio.sleep(0.05)


def test_calls_errors_concurrency_and_replacement():
    async def run():
        pool = _pool(2)
        pids = await pool.start()
        try:
            assert len(pids) == 2 and os.getpid() not in pids
            t0 = time.monotonic()
            both = await asyncio.gather(pool.call(_tagged_pid, 0.5), pool.call(_tagged_pid, 0.5))
            assert {p for _, p in both} == pids and time.monotonic() - t0 < 0.9  # side by side
            assert {t for t, _ in both} == {"ok"}
            with pytest.raises(KeyError, match="messages"):
                await pool.call(_fails)
            with pytest.raises(RuntimeError, match="_unpicklable"):
                await pool.call(_unpicklable)
            # killed while idle: the call goes to the other child, a new one replaces it
            dead = pool.children[0].process.pid
            os.kill(dead, signal.SIGKILL)
            time.sleep(0.2)
            for _ in range(2):
                tag, pid = await pool.call(_tagged_pid)
                assert tag == "ok" and pid != dead
            await _until_up(pool)
            assert pool.restarts == 1
            now = {c.process.pid for c in pool.children}
            assert dead not in now and len(now) == 2
            # killed inside its call: that call fails, the other child answers meanwhile
            with pytest.raises(ChildDied):
                await pool.call(_die)
            assert (await pool.call(_tagged_pid))[1] in now
            await _until_up(pool)
            assert pool.restarts == 2 and len({c.process.pid for c in pool.children} - now) == 1
            # an abandoned call: its child finishes it before it takes another
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pool.call(_tagged_pid, 0.6), 0.1)
            busy = [c for c in pool.children if c is not None and c.busy]
            assert len(busy) == 1
            _, pid = await pool.call(_tagged_pid)
            assert pid != busy[0].process.pid  # the idle one took it
            await asyncio.sleep(0.8)
            assert not busy[0].busy
            served = {(await pool.call(_tagged_pid))[1] for _ in range(4)}
            assert served == {c.process.pid for c in pool.children}  # it is back in turn
            return {c.process.pid for c in pool.children if c is not None}
        finally:
            pool.close(1.0)

    pids = asyncio.run(run())
    assert not any(_alive(p) for p in pids)


def test_an_init_error_fails_the_start_with_its_message():
    async def run():
        await _pool(1, "broken").start()

    with pytest.raises(ValueError, match="init failed: no such checkpoint"):
        asyncio.run(run())
