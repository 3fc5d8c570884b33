"""Wall time of a demo, recorded per stage and invocation in ``out/timing.jsonl``.

A resumed demo adds what it did; a stage killed even by SIGKILL is counted by the next
invocation up to its last heartbeat, so a folder never reports less time than it took.
``time_spent`` sums the records for ``results.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from stormvl.demo.presets import Preset
from stormvl.errors import UserError
from stormvl.io import read_json, write_json_atomic

Log = Callable[[str], None]

TIMING = "timing.jsonl"  # wall seconds per stage and invocation
# the stage running now: its record-to-be, when it started and when it last showed life; a
# demo killed mid-stage (even by SIGKILL) leaves it for the next invocation to count
RUNNING = ".stage.json"
HEARTBEAT_S = 30.0


@contextmanager
def timed(out: Path, stage: str, preset: Preset, heartbeat_s: float = HEARTBEAT_S):
    """Append the wall seconds of ``stage`` to ``out/timing.jsonl`` when it ends.

    The report sums them over every invocation (a resumed demo adds what it did). A stage
    that does not end (killed, failed) counts too, up to its last sign of life: while it
    runs, ``out/.stage.json`` is rewritten every ``heartbeat_s`` seconds, and the next
    invocation records it (``recover_interrupted``), so a killed and resumed demo cannot
    report less time than it took (at most one heartbeat is lost).
    """
    import threading

    from stormvl.evaluation.model import cpu_description

    record = {"stage": stage, "cores": os.cpu_count(), "cpu": cpu_description(),
              "parallel": preset.parallel, "seeds": preset.seeds, "methods": list(preset.methods)}
    t0 = time.time()
    stop = threading.Event()

    def mark() -> None:  # alive as of now
        write_json_atomic(out / RUNNING, {**record, "started": t0, "alive": time.time()})

    def beat() -> None:
        while True:
            mark()
            if stop.wait(heartbeat_s):
                return

    thread = threading.Thread(target=beat, name="stage-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:  # failed or interrupted: the mark stays, alive as of now
        stop.set()
        thread.join()
        mark()
        raise
    stop.set()
    thread.join()
    now = time.time()
    _append_timing(out, record, now - t0, now)
    (out / RUNNING).unlink(missing_ok=True)  # killed just before this: counted twice, not lost


def _append_timing(out: Path, record: dict, seconds: float, ended: float, **extra) -> None:
    from stormvl.data.manifest import JsonlAppender

    with JsonlAppender(out / TIMING) as log:
        log.write({**record, "s": round(seconds, 1),
                   "ended": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ended)), **extra})


def recover_interrupted(out: Path, log: Log) -> None:
    """Count a stage an earlier invocation did not end (``timed``) from its start to its
    last heartbeat, as an ``interrupted`` record of ``timing.jsonl``."""
    mark = out / RUNNING
    if not mark.is_file():
        return
    try:
        run = read_json(mark)
        started, alive, stage = float(run.pop("started")), float(run.pop("alive")), str(run["stage"])
    except (UserError, KeyError, TypeError, ValueError, AttributeError):  # its time is lost
        log(f"[time] {mark}: unreadable, the interrupted stage's time is not counted")
        mark.unlink()
        return
    _append_timing(out, run, max(0.0, alive - started), alive, interrupted=True)
    log(f"[time] an earlier invocation's {stage} stage was interrupted after "
        f"{(alive - started) / 60:.1f} min; counted")
    mark.unlink()


def time_spent(out: Path) -> dict | None:
    """Wall minutes per stage summed over the invocations recorded in ``out/timing.jsonl``."""
    from stormvl.data.manifest import read_jsonl_tolerant

    rows = read_jsonl_tolerant(out / TIMING)
    if not rows:
        return None
    per = {}
    for r in rows:
        per[r["stage"]] = per.get(r["stage"], 0.0) + r["s"] / 60
    return {"stages_min": {k: round(v, 2) for k, v in per.items()},
            "total_min": round(sum(per.values()), 2), "invocations": sum(r["stage"] == "data" for r in rows),
            "interrupted": sum(bool(r.get("interrupted")) for r in rows),
            "cores": max(r.get("cores") or 0 for r in rows),
            "cpu": ", ".join(sorted({r["cpu"] for r in rows if r.get("cpu")})) or "not recorded",
            # the most a stage that did not end can be short by (the report says so)
            "heartbeat_s": HEARTBEAT_S}
