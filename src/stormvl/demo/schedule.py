"""Which demo task runs when, in which process, and how long the rest will take.

The demo's pipeline hands this module its tasks (train a run, score a finished run) with
the task each must wait for; ``in_workers`` runs them in spawned processes with the cores
split between them and logs each as it ends with ``time_left``'s estimate of the rest.
Nothing here knows what a task does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Executor

from stormvl.demo.presets import Preset
from stormvl.io import quiet_libraries

Log = Callable[[str], None]
Job = tuple[str, int]  # (method, seed)
Task = tuple[str, Job]  # ("train" | "score", (method, seed))


def init_worker(threads: int, start_method: str) -> None:
    """A spawned training process: its share of the cores, and the parent's start method
    back as the default (spawn would otherwise carry over to the
    DataLoader's decode workers, which then cannot pickle the dataset's closures)."""
    import multiprocessing as mp
    import threading

    import torch

    torch.set_num_threads(threads)
    mp.set_start_method(start_method, force=True)
    quiet_libraries()
    parent = os.getppid()

    def exit_with_parent():  # a demo killed by pid would otherwise leave its workers training
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


def job_order(preset: Preset) -> tuple[list[Job], dict[Job, Job]]:
    """Every (method, seed) run in start order, and the run each one must wait for.

    Longest first, so the two workers finish together: textcot (the longest steps, and the
    start of latent and storm), oracle, direct, then latent and storm (their 500 steps fill
    the gaps at the end). With ``latent_from_textcot`` latent and storm of a seed wait for
    that seed's textcot only.
    """
    rank = {"textcot": 0, "oracle": 1, "direct": 2, "latent": 3, "storm": 3}
    jobs = sorted(((m, s) for s in range(preset.seeds) for m in preset.methods),
                  key=lambda j: (rank[j[0]], j[1]))
    needs = {}
    if preset.latent_from_textcot and "textcot" in preset.methods:
        needs = {j: ("textcot", j[1]) for j in jobs if j[0] in ("latent", "storm")}
    return jobs, needs


def run_jobs(pool: Executor, parallel: int, jobs: list[Job], needs: dict[Job, Job],
             fn: Callable[[Job], object],
             progress: Callable[[Job, float | None, int, int, float], None] | None = None,
             size: Callable[[Job], float | None] | None = None,
             found: Callable[[Job], float] | None = None) -> dict[Job, object]:
    """Run ``fn(job)`` for every job on ``pool``, at most ``parallel`` at once, in ``jobs``
    order except that a job starts only after the one it ``needs`` has finished.
    ``progress(job, seconds, done, total, left_s)`` is told of each job as it finishes, with
    ``time_left``'s estimate of the rest (``size``: see there).

    ``found(job)``: the share of a job done before any starts (a resumed demo: 1 = all of
    it). Such a job still runs, to return its results. One found whole ends at once and is
    no measure of a job: its seconds are None and stay out of the estimate. One found in
    part (a run killed mid-training) counts as its seconds scaled to the whole job.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    pending, running, done, started, took = list(jobs), {}, {}, {}, {}
    before = {j: found(j) for j in jobs} if found else {}

    def share(job) -> float:
        return before.get(job, 0.0)

    while pending or running:
        ready = [j for j in pending if needs.get(j) is None or needs[j] in done]
        for job in ready[: max(0, parallel - len(running))]:
            pending.remove(job)
            running[pool.submit(fn, job)] = job
            started[job] = time.time()
        if not running:
            raise RuntimeError(f"runs wait for runs that never start: {pending}")
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            job = running.pop(future)
            done[job] = future.result()  # a failed run stops the demo
            seconds, part = time.time() - started[job], share(job)
            if part < 1:
                took[job] = seconds / (1 - part)
            if progress is not None:
                now = time.time()
                left = time_left(took, pending, {j: now - started[j] for j in running.values()},
                                 parallel, size, share)
                progress(job, seconds if part < 1 else None, len(done), len(jobs), left)
    return done


def is_run(job) -> bool:
    """Whether ``job`` is one (method, seed) run, not a task made of runs."""
    return isinstance(job, tuple) and len(job) == 2 and isinstance(job[1], int)


def job_kind(job) -> object:
    """A job without its seed: ``("train", ("storm", 3))`` -> ``("train", "storm")``."""
    if is_run(job):
        return job[0]
    return tuple(map(job_kind, job)) if isinstance(job, tuple) else job


def time_left(took: dict[Job, float], pending: list[Job], elapsed: dict[Job, float],
              parallel: int, size: Callable[[Job], float | None] | None = None,
              share: Callable[[Job], float] | None = None) -> float:
    """Seconds until every job is done, roughly (waits between jobs are ignored).

    A job not yet done is expected to take the mean time of the finished jobs of its kind
    (another seed of the same run). While none of its kind has finished: a job with a
    ``size`` (a training run's steps) takes the finished sized jobs' seconds per unit times
    its size; one without takes the mean of the finished jobs without one; with nothing
    comparable finished it is not counted yet. Without ``size`` every job is comparable.
    A job with a ``share`` done before it started counts the rest of it. Running jobs count
    what they have left; the sum is shared by the workers (``parallel``, or fewer when fewer
    jobs are left).
    """
    if not took:
        return float("nan")
    size, share = size or (lambda job: None), share or (lambda job: 0.0)
    kinds: dict[object, list[float]] = {}
    for job, s in took.items():
        kinds.setdefault(job_kind(job), []).append(s)
    units = {j: size(j) for j in took}
    sized = [(s, units[j]) for j, s in took.items() if units[j] is not None]
    unsized = [s for j, s in took.items() if units[j] is None]

    def expect(job) -> float:
        same, n = kinds.get(job_kind(job)), size(job)
        if same:
            return sum(same) / len(same)
        if n is not None:
            total = sum(u for _, u in sized)
            return sum(s for s, _ in sized) / total * n if total else 0.0
        return sum(unsized) / len(unsized) if unsized else 0.0

    def rest(job) -> float:  # what a job takes from its start
        return expect(job) * (1.0 - share(job))

    work = sum(map(rest, pending)) + sum(max(0.0, rest(j) - e) for j, e in elapsed.items())
    return work / max(1, min(parallel, len(pending) + len(elapsed)))


def job_name(job) -> str:
    """``("score", ("storm", 0))`` -> ``score storm seed 0``."""
    if is_run(job):
        return f"{job[0]} seed {job[1]}"
    return " ".join(map(job_name, job)) if isinstance(job, tuple) else str(job)


def in_workers(preset: Preset, jobs: list[Job], needs: dict[Job, Job], fn: Callable[[Job], object],
               log: Log, what: str, size: Callable[[Job], float | None] | None = None,
               found: Callable[[Job], float] | None = None) -> dict[Job, object]:
    """``fn(job)`` for every job: in this process when ``preset.parallel`` <= 1 (``jobs`` must
    then list each job after the one it needs), else ``parallel`` spawned processes with the
    cores split between them, with progress lines (``run_jobs``: ``size``, ``found``). ``fn``
    must be picklable (a module function or a partial)."""
    if preset.parallel <= 1:
        return {job: fn(job) for job in jobs}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    def progress(job, seconds: float | None, n: int, total: int, left_s: float) -> None:
        took = "found done" if seconds is None else f"{seconds / 60:.1f} min"
        left = "" if n == total or left_s != left_s else (
            f"; ~{left_s / 60:.0f} min left" if left_s >= 90 else "; ~1 min left")
        log(f"[{what}] {n}/{total} done: {job_name(job)} ({took}{left})")

    threads = max(1, (os.cpu_count() or 1) // preset.parallel)
    log(f"[{what}] {len(jobs)} jobs, {preset.parallel} at a time, {threads} thread(s) each")
    with ProcessPoolExecutor(preset.parallel, mp_context=mp.get_context("spawn"),
                             initializer=init_worker,
                             initargs=(threads, mp.get_start_method())) as pool:
        return run_jobs(pool, preset.parallel, jobs, needs, fn, progress, size, found)


def task_order(preset: Preset, score: bool) -> tuple[list[Task], dict[Task, Task]]:
    """The pool's tasks in start order and the task each waits for: every training run
    (``job_order``), then, with ``score``, each run's scoring, which waits for that run only
    (most scoring first: storm has two stages and two diagnostics, latent one)."""
    jobs, needs = job_order(preset)
    tasks = [("train", job) for job in jobs]
    after = {("train", job): ("train", need) for job, need in needs.items()}
    if score:
        rank = {"storm": 0, "latent": 1, "textcot": 2, "oracle": 3, "direct": 4}
        tasks += [("score", job) for job in sorted(jobs, key=lambda j: (rank[j[0]], j[1]))]
        after |= {("score", job): ("train", job) for job in jobs}
    return tasks, after


