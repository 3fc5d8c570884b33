"""Run a generator over a manifest: sharded, resumable, with cost accounting.

Layout of an output folder ``DIR``::

    DIR/thoughts/<id>.mp4          one thought video per sample (atomic writes)
    DIR/videos/<path in input>     input videos, hard-linked (copied across filesystems)
    DIR/manifest.jsonl             the input rows with ``thought_video`` filled
    DIR/stats.json                 seconds per thought video, GPU memory, skipped rows
    DIR/run.json                   generator + config + input, checked on resume
    DIR/done.jsonl                 durable log of written videos (fast resume)

With ``--shard i/n`` the manifest and stats are ``manifest.shard-i-of-n.jsonl`` and
``stats.shard-i-of-n.json``; ``merge`` joins them. Media paths in the output manifest are
relative to ``DIR`` and never climb out of it (``resolve_media`` refuses that), which is why
input videos outside ``DIR`` are linked in rather than referenced with ``..``.

Resume rule: a row is done when the input row already had a thought video, or its output
exists and is either in the done-log with the same size or decodes. Videos are written
atomically, so a killed run loses at most the batch in flight (a resume removes the
temporaries it left); the manifest and stats are written once at the end. The done-log also
keeps each video's generation seconds, so the cost figures of a resumed run count every
video written, whichever invocation wrote it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stormvl.config import to_dict
from stormvl.data.manifest import (
    JsonlAppender,
    Sample,
    read_jsonl_tolerant,
    read_manifest,
    resolve_media,
    write_manifest,
)
from stormvl.data.video import decode_frames, probe, write_video
from stormvl.errors import ManifestError, UserError, VideoError
from stormvl.io import read_json, remove_stale_temps, write_json_atomic, write_text_atomic, writing
from stormvl.thoughts.base import Generator, InputClip, check_video

Log = Callable[[str], None]


@dataclass
class RunStats:
    """What a run (or one shard of it) did; saved as ``stats*.json``."""

    generator: str
    input: str  # the input manifest (absolute)
    input_rows: int  # rows in the whole input manifest
    shard: list[int] | None  # [i, n] or None for an unsharded run
    ids: list[str]  # ids assigned to this run, in input order
    generated: int = 0  # thought videos made by this invocation
    resumed: int = 0  # found already written and decodable in DIR
    existing: int = 0  # the input row already had a thought video
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"id", "reason"}]
    # generation seconds of each video made by this run, in input order: this invocation's and
    # (from the done-log) those of the invocations it resumed
    seconds: list[float] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The cost figures (also printed by the CLI)."""
        s = self.seconds
        return {
            "generated": self.generated,
            "resumed": self.resumed,
            "existing": self.existing,
            "skipped": len(self.skipped),
            "seconds_per_video": statistics.fmean(s) if s else None,
            "seconds_per_video_median": statistics.median(s) if s else None,
            "generate_seconds_total": sum(s),
            "wall_seconds": self.wall_seconds,
            "gpu": self.gpu,
        }

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "summary": self.summary()}

    def describe(self) -> list[str]:
        """Counts and cost as the lines the CLI prints at the end."""
        s = self.summary()
        spv, gpu = s["seconds_per_video"], s["gpu"].get("max_allocated_bytes")
        lines = [
            f"rows {len(self.ids)}: generated {s['generated']}, resumed {s['resumed']}, "
            f"existing {s['existing']}, skipped {s['skipped']}",
            f"cost: {spv:.3f} s per thought video" if spv is not None else "cost: nothing generated",
        ]
        if gpu is not None:
            lines.append(f"gpu memory: peak {gpu / 2**30:.2f} GiB allocated")
        return lines


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n); raises UserError naming the flag."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise UserError(f"--shard: expected i/n with 0 <= i < n, got {text!r}")
    return int(m[1]), int(m[2])


def output_names(shard: tuple[int, int] | None) -> tuple[str, str]:
    """(manifest file, stats file) names for an unsharded run or one shard."""
    if shard is None:
        return "manifest.jsonl", "stats.json"
    i, n = shard
    return f"manifest.shard-{i}-of-{n}.jsonl", f"stats.shard-{i}-of-{n}.json"


def thought_name(sample_id: str) -> str:
    """A file name for a sample id; ids with unsafe characters get a hash suffix."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id).lstrip(".") or "_"
    if safe != sample_id:
        safe = f"{safe[:80]}-{hashlib.sha1(sample_id.encode()).hexdigest()[:10]}"
    return f"{safe}.mp4"


def place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (copy across filesystems); atomic, idempotent."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with writing(dst):
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def media_in(out: Path, src: Path, rel_dir: str, rel_name: str) -> str:
    """Path of ``src`` relative to ``out``, linking it to ``out/rel_dir/rel_name`` if outside."""
    out_r = out.resolve()
    if out_r in src.parents:
        return src.relative_to(out_r).as_posix()
    place(src, out_r / rel_dir / rel_name)
    return f"{rel_dir}/{rel_name}"


def decodes(path: Path) -> bool:
    """True when ``path`` is a video whose frames all decode (the resume check)."""
    try:
        decode_frames(path, None)
    except VideoError:
        return False
    return True


# Settings that change speed or placement, not the videos: a resume may change them.
RUNTIME_KEYS = frozenset({"batch_size", "device", "cpu_offload", "local_files_only"})


def _output_settings(cfg: Any) -> Any:
    """The config as plain data without RUNTIME_KEYS (also inside nested configs)."""
    if isinstance(cfg, dict):
        return {k: _output_settings(v) for k, v in cfg.items() if k not in RUNTIME_KEYS}
    return cfg


def _check_run_record(out: Path, record: dict, overwrite: bool) -> None:
    """Refuse to resume ``out`` with a different generator, config or input manifest."""
    path = out / "run.json"
    if path.exists() and not overwrite:
        old = read_json(path)
        if old != record:
            diff = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise UserError(
                f"{path}: {out} was made with a different {', '.join(diff)}; "
                "use a new --out or pass --overwrite"
            )
        return
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


@dataclass
class _Row:
    sample: Sample
    video: Path  # resolved input video
    out_video: str = ""  # path relative to DIR for the output manifest
    thought: str | None = None  # thought video relative to DIR once done


class _Job:
    """One invocation over the rows assigned to this shard.

    Every written video is also appended to a durable done-log (id, file, size), so a resume
    trusts logged files without decoding them; unlogged files are decoded once.
    """

    def __init__(self, gen: Generator, root: Path, out: Path, stats: RunStats, done_log: Path,
                 overwrite: bool, log: Log):
        self.gen, self.root, self.out, self.stats, self.log = gen, root, out, stats, log
        self.overwrite = overwrite
        if overwrite and done_log.exists():
            done_log.unlink()
        self.logged = {r["id"]: r for r in read_jsonl_tolerant(done_log)}
        self.appender = JsonlAppender(done_log)
        self.cost: dict[str, float] = {}  # id -> generation seconds (this or a logged run)

    def skip(self, sample: Sample, reason: object) -> None:
        self.stats.skipped.append({"id": sample.id, "reason": str(reason)})
        self.log(f"skip {sample.id}: {reason}")

    def classify(self, s: Sample) -> _Row | None:
        """A row (``thought`` set when already done), or None when its input is bad."""
        try:
            video = resolve_media(self.root, s.video, f"row {s.id!r}: field 'video'")
            probe(video)
            row = _Row(s, video, media_in(self.out, video, "videos", s.video))
            if not self.overwrite and s.thought_video:
                src = resolve_media(self.root, s.thought_video, f"row {s.id!r}: field 'thought_video'")
                if src.is_file():
                    name = Path(thought_name(s.id)).with_suffix(src.suffix or ".mp4").name
                    row.thought = media_in(self.out, src, "thoughts", name)
                    self.stats.existing += 1
                    return row
                self.log(f"row {s.id}: thought_video {s.thought_video} not found, generating it")
        except (VideoError, ManifestError) as exc:
            self.skip(s, exc)
            return None
        target = self.out / "thoughts" / thought_name(s.id)
        if self.overwrite:
            target.unlink(missing_ok=True)  # a killed --overwrite run must not resume old files
        elif target.is_file() and (self._logged(s.id, target) or decodes(target)):
            row.thought = f"thoughts/{target.name}"
            self.stats.resumed += 1
            if self._logged(s.id, target) and self.logged[s.id].get("seconds") is not None:
                self.cost[s.id] = float(self.logged[s.id]["seconds"])
        return row

    def _logged(self, sample_id: str, target: Path) -> bool:
        entry = self.logged.get(sample_id)
        return bool(entry) and entry["file"] == target.name and entry["bytes"] == target.stat().st_size

    def generate(self, batch: list[_Row]) -> None:
        """Decode inputs, generate and write one batch; bad rows are skipped and counted."""
        ready: list[tuple[_Row, InputClip]] = []
        for row in batch:
            try:
                info = probe(row.video)
                idx = self.gen.frame_indices(row.sample, info)
                frames, fps = decode_frames(row.video, idx)
                ready.append((row, InputClip(frames, idx.astype(np.float64) / fps, info)))
            except VideoError as exc:
                self.skip(row.sample, exc)
        if not ready:
            return
        t0 = time.perf_counter()
        try:
            outs = self.gen.generate_batch([r.sample for r, _ in ready], [c for _, c in ready])
        except UserError as exc:
            if len(ready) == 1:  # a row the generator cannot handle (e.g. not a suite row)
                self.skip(ready[0][0].sample, exc)
                return
            for r, _ in ready:  # find the row(s) at fault, keep the rest of the batch
                self.generate([r])
            return
        per_video = (time.perf_counter() - t0) / len(ready)
        for (row, clip), frames in zip(ready, outs, strict=True):
            self.write(row, clip, frames, per_video)
            self.stats.generated += 1
            self.cost[row.sample.id] = per_video

    def write(self, row: _Row, clip: InputClip, frames: np.ndarray, seconds: float) -> None:
        frames = check_video(frames, f"{self.gen.name}({row.sample.id})")
        # H.264 4:2:0 needs even sizes: repeat the last row / column when odd.
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        name = thought_name(row.sample.id)
        path = self.out / "thoughts" / name
        with writing(path):
            write_video(path, frames, self.gen.output_fps(row.sample, clip), self.gen.config.lossless)
        self.appender.write({"id": row.sample.id, "file": name, "bytes": path.stat().st_size,
                             "seconds": seconds})
        row.thought = f"thoughts/{name}"


def run_thoughts(
    manifest: str | Path,
    out: str | Path,
    gen: Generator,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Log | None = None,
) -> RunStats:
    """Write a thought video for every (assigned) row of ``manifest`` into ``out``.

    ``gen`` must already be loaded (``gen.load()``) so missing weights fail before any work.

    Returns:
        RunStats of this invocation (also written to ``out/stats*.json``).

    Raises:
        UserError: bad manifest, --out that would overwrite the input, or a resume of
            ``out`` with a different generator / config.
    """
    manifest = Path(manifest).resolve()
    out = Path(out)
    samples = read_manifest(manifest)
    man_name, stats_name = output_names(shard)
    if (out / man_name).resolve() == manifest:
        raise UserError(f"--out {out}: would overwrite the input manifest {manifest}")
    i, n = shard or (0, 1)
    rows = [s for k, s in enumerate(samples) if k % n == i]
    stats = RunStats(gen.name, str(manifest), len(samples), list(shard) if shard else None,
                     [s.id for s in rows])
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    record = {"generator": gen.name, "config": _output_settings(to_dict(gen.config)),
              "input": str(manifest)}
    _check_run_record(out, record, overwrite)
    done_log = out / man_name.replace("manifest", "done", 1)
    _remove_stale_temps(out, rows, [man_name, stats_name, done_log.name, "run.json"])
    job = _Job(gen, manifest.parent, out, stats, done_log, overwrite, log or (lambda _msg: None))
    classified = [r for r in map(job.classify, rows) if r is not None]
    pending = [r for r in classified if r.thought is None]
    bs = gen.config.batch_size
    with job.appender, tqdm(total=len(rows), initial=len(rows) - len(pending), unit="video",
                            desc=f"thoughts[{gen.name}]", disable=not progress,
                            dynamic_ncols=True) as bar:
        for k in range(0, len(pending), bs):
            job.generate(pending[k : k + bs])
            bar.update(len(pending[k : k + bs]))
    by_id = {r.sample.id: r for r in classified if r.thought}
    result = [dataclasses.replace(s, video=by_id[s.id].out_video, thought_video=by_id[s.id].thought)
              for s in rows if s.id in by_id]
    stats.seconds = [job.cost[i] for i in stats.ids if i in job.cost]
    stats.gpu = gen.memory_stats()
    stats.wall_seconds = time.perf_counter() - t0
    write_manifest(out / man_name, result)
    write_json_atomic(out / stats_name, stats.to_json())
    return stats


def _remove_stale_temps(out: Path, rows: list[Sample], names: list[str]) -> None:
    """Remove what killed writers of this run's files left (``.<name>.<pid>.tmp``): its
    thought videos, linked input videos and records, not those of other shards in ``out``."""
    remove_stale_temps(out, names)
    thoughts = {thought_name(s.id) for s in rows}
    thoughts |= {Path(thought_name(s.id)).with_suffix(Path(s.thought_video).suffix).name
                 for s in rows if s.thought_video and Path(s.thought_video).suffix}
    remove_stale_temps(out / "thoughts", thoughts)
    linked: dict[Path, set[str]] = {}
    for s in rows:
        if not Path(s.video).is_absolute():
            dst = out / "videos" / s.video
            linked.setdefault(dst.parent, set()).add(dst.name)
    for folder, files in linked.items():
        remove_stale_temps(folder, files)


_SHARD_RE = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.jsonl")


def _find_shards(dirs: list[Path]) -> tuple[int, dict[int, Path]]:
    """Map shard index -> folder holding its finished manifest; check the set is complete."""
    found: dict[int, Path] = {}
    counts: set[int] = set()
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d}: not a folder")
        for p in sorted(d.glob("manifest.shard-*-of-*.jsonl")):
            m = _SHARD_RE.fullmatch(p.name)
            if not m:
                continue
            i, n = int(m[1]), int(m[2])
            if i in found and found[i].resolve() != d.resolve():
                raise UserError(f"{p}: shard {i}/{n} also found in {found[i]}")
            found[i] = d
            counts.add(n)
    if not found:
        raise UserError(f"{', '.join(map(str, dirs))}: no shard manifests (manifest.shard-i-of-n.jsonl)")
    if len(counts) > 1:
        raise UserError(f"shards of different runs mixed: shard counts {sorted(counts)}")
    n = counts.pop()
    missing = [i for i in range(n) if i not in found]
    if missing:
        raise UserError(
            f"shards {missing} of {n} have no manifest (not run or not finished); "
            f"run them with --shard i/{n} before merging"
        )
    return n, found


def merge_shards(dirs: list[str | Path], out: str | Path | None = None) -> RunStats:
    """Join finished shards into ``out/manifest.jsonl`` + ``out/stats.json``, input order.

    ``out`` defaults to the first folder; media from other folders are linked into it.

    Raises:
        UserError: a missing or unfinished shard, shards of different runs, or rows lost.
    """
    dirs = [Path(d) for d in dirs]
    out = Path(out) if out is not None else dirs[0]
    n, found = _find_shards(dirs)
    parts: list[tuple[Path, RunStats, list[Sample]]] = []
    for i in range(n):
        d = found[i]
        man_name, stats_name = output_names((i, n))
        if not (d / stats_name).is_file():
            raise UserError(f"{d / stats_name}: missing (shard {i}/{n} did not finish)")
        raw = read_json(d / stats_name)
        raw.pop("summary", None)
        parts.append((d, RunStats(**raw), read_manifest(d / man_name)))
    first = parts[0][1]
    runs = {json.dumps(read_json(d / "run.json"), sort_keys=True) for d, _, _ in parts}
    if len(runs) > 1 or any(st.input != first.input for _, st, _ in parts):
        raise UserError("shards were made with different inputs, generators or configs")
    ids = [i for _, st, _ in parts for i in st.ids]
    if len(ids) != first.input_rows or len(set(ids)) != len(ids):
        raise UserError(f"shards cover {len(set(ids))} of {first.input_rows} input rows")
    merged = RunStats(first.generator, first.input, first.input_rows, None, [])
    by_id: dict[str, Sample] = {}
    for d, st, rows in parts:
        skipped = {s["id"] for s in st.skipped}
        if {r.id for r in rows} | skipped != set(st.ids):
            raise UserError(f"{d}: shard {st.shard} manifest does not match its stats")
        for r in rows:
            by_id[r.id] = _relocate(r, d, out)
        merged.generated += st.generated
        merged.resumed += st.resumed
        merged.existing += st.existing
        merged.skipped += st.skipped
        merged.seconds += st.seconds
        merged.wall_seconds += st.wall_seconds
        for k, v in st.gpu.items():
            merged.gpu[k] = max(v, merged.gpu.get(k, v)) if isinstance(v, (int, float)) else v
    # Shard i holds input rows i, i+n, i+2n, ...: interleaving restores the input order.
    longest = max(len(st.ids) for _, st, _ in parts)
    merged.ids = [st.ids[k] for k in range(longest) for _, st, _ in parts if k < len(st.ids)]
    write_manifest(out / "manifest.jsonl", [by_id[i] for i in merged.ids if i in by_id])
    write_json_atomic(out / "stats.json", merged.to_json())
    if not (out / "run.json").exists():
        place(parts[0][0] / "run.json", out / "run.json")
    return merged


def _relocate(row: Sample, src_dir: Path, out: Path) -> Sample:
    """Check a shard row's media exist; link them into ``out`` when merging across folders."""
    for rel in (row.video, row.thought_video):
        if rel is None:
            raise UserError(f"{src_dir}: row {row.id!r} has no thought_video")
        path = resolve_media(src_dir, rel, f"{src_dir}: row {row.id!r}")
        if not path.is_file():
            raise UserError(f"{path}: missing (row {row.id!r} of {src_dir})")
        if src_dir.resolve() != out.resolve():
            place(path, out / rel)
    return row
