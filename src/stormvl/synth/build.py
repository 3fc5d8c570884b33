"""Write a suite to disk: videos, thought videos, manifest; parallel and resumable.

Layout of ``DIR``::

    synth.json         the arguments (a re-run with the same ones resumes, others are refused)
    manifest.jsonl     one Sample row per item, sorted by id once the run completes
    videos/<id>.mp4    input video (lossless H.264)
    thoughts/<id>.mp4  thought video (lossless H.264)

Why it survives a kill: each video is written atomically (temp file + rename) and a row is
appended (flushed + fsynced) only after both of its videos exist; a re-run drops a torn
last line, removes the temporaries a killed writer left, skips ids already done and finally
rewrites the manifest sorted, atomically. A full disk stops the run with one error naming the
file (nothing half-written stays); the rerun resumes. The
RNG of item i depends only on (seed, split, family, i), so any worker count gives the same
bytes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from stormvl.data.manifest import (
    JsonlAppender,
    Sample,
    parse_row,
    read_jsonl_tolerant,
    write_manifest,
)
from stormvl.data.video import write_video
from stormvl.errors import UserError
from stormvl.io import read_json, remove_stale_temps, write_text_atomic, writing
from stormvl.synth.base import GENERATOR_VERSION
from stormvl.synth.registry import FAMILIES, check_args, generate

FPS = 8.0
MANIFEST = "manifest.jsonl"
ARGS_FILE = "synth.json"


@dataclass(frozen=True)
class SuiteArgs:
    """The arguments that define a suite's content (workers / progress do not)."""

    n: int
    families: tuple[str, ...]
    split: str
    difficulty: str
    frames: int
    size: int
    seed: int
    intro: float = 0.0
    option_order: str = "shuffled"
    fps: float = FPS
    version: int = GENERATOR_VERSION

    def plan(self) -> list[tuple[str, int]]:
        """(family, index) pairs: ``n`` is the TOTAL, spread evenly (earlier families get the
        remainder), so ``--n 100`` over 12 families gives 9 or 8 items each."""
        k = len(self.families)
        out = []
        for j, fam in enumerate(self.families):
            count = self.n // k + (1 if j < self.n % k else 0)
            out += [(fam, i) for i in range(count)]
        return out


def item_id(family: str, split: str, index: int) -> str:
    return f"{family}-{split}-{index:06d}"


def _parse_families(families) -> tuple[str, ...]:
    if families is None or families == "" or families == "all":
        return tuple(FAMILIES)
    if isinstance(families, str):
        families = [f.strip() for f in families.split(",") if f.strip()]
    fams = tuple(dict.fromkeys(families))
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown or not fams:
        raise UserError(
            f"--families: unknown family {', '.join(map(repr, unknown)) or '(none given)'} "
            f"(known: {', '.join(FAMILIES)})"
        )
    return fams


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not a writable directory")


def validate(out_dir, n, families, split, difficulty, frames, size, seed, workers,
             intro=0.0, option_order="shuffled") -> SuiteArgs:
    """Check every argument before anything is written; one UserError listing the problems."""
    problems = []
    try:
        fams = _parse_families(families)
    except UserError as exc:
        problems.append(str(exc))
        fams = tuple(FAMILIES)
    if n < 1:
        problems.append(f"--n {n} must be >= 1")
    if workers < 1:
        problems.append(f"--workers {workers} must be >= 1")
    if seed < 0:
        problems.append(f"--seed {seed} must be >= 0")
    problems += check_args(fams[0], split, difficulty, frames, size, intro, option_order)
    if problems:
        raise UserError("; ".join(problems))
    _check_writable(Path(out_dir))
    return SuiteArgs(n, fams, split, difficulty, frames, size, seed, float(intro), option_order)


class SuiteMismatch(UserError):
    """DIR holds another suite (or other files); ``differs`` names the arguments that differ."""

    def __init__(self, message: str, differs: list[str]):
        super().__init__(message)
        self.differs = differs


def _prepare_dir(out: Path, args: SuiteArgs, overwrite: bool) -> None:
    """Refuse a non-empty DIR of other arguments unless ``overwrite``; record the arguments."""
    want = {**asdict(args), "families": list(args.families)}
    if out.exists() and any(out.iterdir()):
        meta_p = out / ARGS_FILE
        have = None
        if meta_p.is_file():
            try:
                have = {k: v for k, v in read_json(meta_p).items() if k != "complete"}
            except (UserError, AttributeError):  # damaged, or not a JSON object
                have = None
        if overwrite:
            for name in (MANIFEST, ARGS_FILE):
                (out / name).unlink(missing_ok=True)
            for sub in ("videos", "thoughts"):
                shutil.rmtree(out / sub, ignore_errors=True)
        elif have != want:
            why = "was made with other arguments" if have else "is not empty"
            differs = [k for k in want if have.get(k) != want[k]] if have else []
            raise SuiteMismatch(
                f"--out {out}: {why}; use --overwrite to replace it"
                + (f" (differs in: {', '.join(differs)})" if differs else ""), differs)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out, (MANIFEST, ARGS_FILE))  # left by a killed (or disk-full) writer
    for sub in ("videos", "thoughts"):
        (out / sub).mkdir(exist_ok=True)
        for tmp in (out / sub).glob(".*.tmp"):  # left by a killed encoder
            tmp.unlink(missing_ok=True)
    _write_json(out / ARGS_FILE, {**want, "complete": False})


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def make_row(out: str, args: SuiteArgs, family: str, index: int) -> dict:
    """Generate one item, write both videos (atomically) and return its manifest row."""
    item = generate(family, index, args.seed, args.split, args.difficulty, args.frames, args.size,
                    args.intro, args.option_order)
    sid = item_id(family, args.split, index)
    video, thought = f"videos/{sid}.mp4", f"thoughts/{sid}.mp4"
    for rel, frames in ((video, item.video), (thought, item.thought)):
        with writing(Path(out) / rel):
            write_video(Path(out) / rel, frames, fps=args.fps, lossless=True)
    sample = Sample(
        id=sid,
        video=video,
        question=item.question,
        options=item.options,
        answer=item.answer,
        thought_video=thought,
        rationale=item.rationale,
        family=family,
        split=args.split,
        difficulty=item.meta["synth"]["level"],
        seed=args.seed,
        state=item.state,
        meta=item.meta,
    )
    return sample.to_json()


def _work(job) -> dict:
    out, args, family, index = job
    return make_row(out, args, family, index)


def _done_rows(out: Path, plan_ids: set[str]) -> dict[str, dict]:
    """Rows of a previous (killed) run whose two videos exist, deduplicated by id."""
    done: dict[str, dict] = {}
    for i, row in enumerate(read_jsonl_tolerant(out / MANIFEST)):
        parse_row(row, f"{out / MANIFEST}:{i + 1}")
        sid = row["id"]
        if sid in plan_ids and (out / row["video"]).is_file() and (out / row["thought_video"]).is_file():
            done[sid] = row
    return done


def build_suite(
    out_dir,
    n: int,
    families=None,
    split: str = "train",
    difficulty: str = "mixed",
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    intro: float = 0.0,
    option_order: str = "shuffled",
) -> Path:
    """Generate ``n`` items in total (spread evenly over ``families``) into ``out_dir``.

    ``intro`` / ``option_order``: see ``synth.generate`` (both default to the plain suite).

    Returns:
        path of the manifest.

    Raises:
        UserError: a bad argument (nothing is written), or a non-empty ``out_dir`` made with
            other arguments and no ``overwrite``.
    """
    args = validate(out_dir, n, families, split, difficulty, frames, size, seed, workers,
                    intro, option_order)
    out = Path(out_dir)
    _prepare_dir(out, args, overwrite)
    plan = args.plan()
    ids = {item_id(f, args.split, i) for f, i in plan}
    done = _done_rows(out, ids)
    write_manifest(out / MANIFEST, [parse_row(r, "resume") for r in done.values()])
    jobs = [(str(out), args, f, i) for f, i in plan if item_id(f, args.split, i) not in done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plan), initial=len(done), desc="synth", unit="item", file=sys.stderr)
    with JsonlAppender(out / MANIFEST) as log:
        if workers == 1 or len(jobs) < 2:
            results = map(_work, jobs)
            pool = None
        else:
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            pool = ctx.Pool(min(workers, len(jobs)))
            results = pool.imap_unordered(_work, jobs, chunksize=4)
        try:
            for row in results:
                log.write(row)
                done[row["id"]] = row
                if bar is not None:
                    bar.update(1)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            if bar is not None:  # (also on an error, so its line ends before the message)
                bar.close()
    rows = [parse_row(done[k], f"{out / MANIFEST}") for k in sorted(done)]
    write_manifest(out / MANIFEST, rows)
    _write_json(out / ARGS_FILE, {**asdict(args), "families": list(args.families), "complete": True})
    return out / MANIFEST
