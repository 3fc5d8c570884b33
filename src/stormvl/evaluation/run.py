"""A benchmark run: one durable JSONL line per item (reply, latency split, tokens, latent
steps, frame indices), a settings record that refuses a re-run with other settings into the
same folder (mixed settings give a number that describes nothing), resume by skipping ids
already answered (failed ones are retried), data-parallel shards, then scoring with the
benchmark's own rules into results.json / results.md. A run where too many items failed to
load is an error, not a score. Also one question about one video (``stormvl answer``).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from stormvl.data.manifest import JsonlAppender, read_jsonl_tolerant
from stormvl.errors import UserError
from stormvl.evaluation.model import answer_part, cpu_description, package_versions, text_sha
from stormvl.evaluation.runner import Prepared, Runner
from stormvl.io import exclusive_folder, read_json, write_text_atomic
from stormvl.tasks.base import EvalItem

MAX_FAILED_SHARE = 0.05  # default: a run with more items failing to load is an error


@dataclass
class Shards:
    """Where this process writes and which share of the items it answers."""

    out: Path
    rank: int = 0
    world: int = 1

    def shard(self, kind: str, rank: int | None = None) -> Path:
        """``predictions.jsonl`` / ``failed.jsonl`` (one process) or per-rank shards."""
        r = self.rank if rank is None else rank
        return self.out / (f"{kind}.jsonl" if self.world == 1 else f"{kind}.rank{r}.jsonl")


def _done_ids(out: Path) -> set[str]:
    """Ids answered in any earlier run, whatever its process count was."""
    done = set()
    for f in [out / "predictions.jsonl", *sorted(out.glob("predictions.rank*.jsonl"))]:
        done |= {str(r["id"]) for r in read_jsonl_tolerant(f)}
    return done


def _forget_failures(out: Path) -> None:
    """Drop earlier runs' failure logs: every run retries the items that failed (the media
    may have been fixed since), so the logs then hold this run's failures only."""
    for f in [out / "failed.jsonl", *out.glob("failed.rank*.jsonl")]:
        f.unlink(missing_ok=True)


def check_settings(out: Path, key: dict, write: bool) -> None:
    """Refuse an OUTDIR holding predictions made with other settings; record ours."""
    path = out / "settings.json"
    if path.exists():
        old = read_json(path)
        diff = sorted(k for k in set(key) | set(old) if key.get(k) != old.get(k))
        if diff:
            raise UserError(
                f"{out}: holds predictions made with other settings ({', '.join(diff)}: "
                f"{[old.get(k) for k in diff]} there, {[key.get(k) for k in diff]} now); "
                "use another --out or delete it")
        return
    if write:
        write_text_atomic(path, json.dumps(key, indent=2, sort_keys=True) + "\n")


def _row(p: Prepared, text: str, res, i: int, bsz: int, k: int, writes: bool) -> dict:
    row = {"id": p.item.id, "response": answer_part(writes, text),
           "latency_s": {name: round(t, 6) for name, t in res.timings.items()},
           "batch_size": bsz, "load_s": round(p.load_s, 6),
           "generated_tokens": int(res.n_generated[i]), "latent_steps": k,
           "frame_indices": p.frame_indices}
    if text != row["response"]:
        row["raw_response"] = text
    if p.thought_indices is not None:
        row["thought_frame_indices"] = p.thought_indices
    return row


def _prepared_batches(runner: Runner, items: Sequence[EvalItem], pool: ThreadPoolExecutor):
    """Yield batches of (item, Prepared | error text); worker threads decode at most one
    batch ahead of the model (bounded, so a 3,000-item benchmark never sits in memory)."""

    def job(it: EvalItem):
        try:
            return it, runner.prepare(it)
        except (UserError, OSError) as exc:  # VideoError, corrupt frames: recorded, no crash
            return it, str(exc)

    bs = runner.settings.batch_size
    todo, window = iter(items), deque()
    while True:
        while len(window) < 2 * bs and (it := next(todo, None)) is not None:
            window.append(pool.submit(job, it))
        if not window:
            return
        yield [window.popleft().result() for _ in range(min(bs, len(window)))]


def answer_items(runner: Runner, items: Sequence[EvalItem], info: Shards,
                 progress: bool = True) -> int:
    """Answer this process's pending share of ``items``, one durable line each.

    Returns:
        the number of items that failed to load in this call.
    """
    from tqdm import tqdm

    done = _done_ids(info.out)
    mine = [it for i, it in enumerate(items) if i % info.world == info.rank]
    todo = [it for it in mine if it.id not in done]
    k, failed = runner.gen["k"], 0
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"eval rank {info.rank}",
               unit="q", disable=not progress, dynamic_ncols=True)
    with JsonlAppender(info.shard("predictions")) as log, \
            JsonlAppender(info.shard("failed")) as fails, ThreadPoolExecutor(2) as pool:
        for loaded in _prepared_batches(runner, todo, pool):
            good = [p for _, p in loaded if isinstance(p, Prepared)]
            for it, p in loaded:
                if not isinstance(p, Prepared):
                    fails.write({"id": it.id, "video": str(it.video), "error": p})
                    failed += 1
            if good:
                res = runner.run(good)
                for i, (p, text) in enumerate(zip(good, res.texts, strict=True)):
                    log.write(_row(p, text, res, i, len(good), k, runner.model.writes_rationale))
            bar.update(len(loaded))
    bar.close()
    return failed


def merge_shards(info: Shards) -> list[dict]:
    """Rank 0, after the barrier: fold every shard into predictions.jsonl / failed.jsonl
    (first row per id wins), atomically, then drop the shards."""
    merged = {}
    for kind in ("predictions", "failed"):
        rows, seen = [], set()
        shards = sorted(info.out.glob(f"{kind}.rank*.jsonl"))
        for f in [info.out / f"{kind}.jsonl", *shards]:
            for r in read_jsonl_tolerant(f):
                if str(r["id"]) not in seen:
                    seen.add(str(r["id"]))
                    rows.append(r)
        if shards:
            write_text_atomic(info.out / f"{kind}.jsonl",
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            for f in shards:
                f.unlink()
        merged[kind] = rows
    return merged["predictions"], merged["failed"]


def run_eval(runner: Runner, benchmark: str, items: Sequence[EvalItem], out_dir: str | Path,
             data: str | Path = "", rank: int = 0, world: int = 1, barrier=None,
             progress: bool = True, max_failed_share: float = MAX_FAILED_SHARE) -> dict | None:
    """Evaluate ``items`` into ``out_dir``; resumable. Returns results on rank 0, else None.

    With ``world`` > 1 (``accelerate launch``) rank r answers items r, r + world, ... into
    its own shard; ``barrier`` (every process calls it) separates the phases.

    Args:
        max_failed_share: the run is an error when more than this share of its items (or
            every item) failed to load; the answered ones stay on disk for the re-run.

    Raises:
        UserError: no items; ``out_dir`` holds a run with other settings; an oracle
            checkpoint on a benchmark without thought videos; another evaluation is writing
            ``out_dir``; too many items failed (rank 0, after all were tried).
    """
    barrier = barrier or (lambda: None)
    if not items:
        raise UserError(f"{benchmark}: no questions to evaluate")
    if runner.settings.limit is not None and runner.settings.limit < 1:
        raise UserError(f"--limit {runner.settings.limit}: must be >= 1")
    if not 0.0 <= max_failed_share <= 1.0:
        raise UserError(f"--max-failed-share {max_failed_share}: must be between 0 and 1")
    prompts_sha = text_sha("\n".join(f"{it.id}\t{it.prompt}" for it in items))  # before --limit
    items = list(items)[: runner.settings.limit] if runner.settings.limit else list(items)
    if runner.model.oracle_frames and not all(it.meta.get("thought_video") for it in items):
        raise UserError(f"{benchmark}: the oracle checkpoint needs a thought video per item; "
                        "only suites with thought videos (synth) can evaluate it")
    info = Shards(Path(out_dir), rank, world)
    # one job per folder: resume trusts the shards on disk (rank 0 holds the lock; a second
    # job's rank 0 stops, and its other ranks with it at the first barrier)
    with exclusive_folder(info.out, "an evaluation") if rank == 0 else nullcontext():
        return _run_eval(runner, benchmark, items, info, data, prompts_sha, barrier, progress,
                         max_failed_share)


def _run_eval(runner: Runner, benchmark: str, items: list[EvalItem], info: Shards, data,
              prompts_sha: str, barrier, progress: bool, max_failed_share: float) -> dict | None:
    from stormvl.tasks import breakdowns

    rank = info.rank
    desc = runner.describe(items[0].prompt if items else "")
    key = {"benchmark": benchmark, "data": str(Path(data).resolve()) if data else "",
           "subtitles": runner.settings.subtitles,
           "prompts_sha256": prompts_sha, **desc}
    key.pop("chat_template_example")
    check_settings(info.out, key, write=False)  # every process refuses alike ...
    barrier()
    if rank == 0:
        check_settings(info.out, key, write=True)  # ... before rank 0 records them
        _forget_failures(info.out)  # before any process logs this run's failures
    barrier()
    answer_items(runner, items, info, progress)
    barrier()
    if rank != 0:
        return None
    preds, fails = merge_shards(info)
    check_failures(info.out, items, fails, max_failed_share)
    return finalize(info.out, benchmark, items, preds, fails, {**key, **desc}, runner.warnings,
                    breakdowns(benchmark))


def check_failures(out: Path, items: Sequence[EvalItem], fails: list[dict],
                   max_share: float = MAX_FAILED_SHARE) -> None:
    """Refuse to score a run where every item, or more than ``max_share`` of them, failed to
    load: its number would describe the data copy (a wrong layout, missing media), not the
    model. An earlier run's results files go too, so none stands in for this run.

    Raises:
        UserError: one line: how many failed, the first reason, and how to resume.
    """
    known = {it.id for it in items}
    fails = [f for f in fails if str(f["id"]) in known]
    n, k = len(items), len(fails)
    if not k or (k < n and k <= max_share * n):
        return
    for name in ("results.json", "results.md"):
        (out / name).unlink(missing_ok=True)
    what = (f"all {n} items failed to load" if k == n else f"{k} of {n} items failed to "
            f"load, more than the {max_share:.0%} allowed (--max-failed-share)")
    first = " ".join(str(fails[0]["error"]).split())
    raise UserError(f"{out}: {what}; first: {fails[0]['id']}: {first}; all in "
                    f"{out / 'failed.jsonl'}; fix them and re-run the same command (answered "
                    "items are kept, failed ones retried)")


def failure_lines(result: dict, failed_log: Path, shown: int = 5) -> list[str]:
    """The console summary of a run's load failures: a count, the first ``shown``, the rest
    counted."""
    n = result["failed"]
    if not n:
        return []
    lines = [f"{n} videos failed to load, counted as missing (see {failed_log}):"]
    lines += [f"  {f['id']}: {f['error']}" for f in result["failed_items"][:shown]]
    if n > shown:
        lines.append(f"  ... and {n - shown} more")
    return lines


def _frame_hash(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: str(r["id"])):
        h.update(f"{r['id']}:{r.get('frame_indices')}:{r.get('thought_frame_indices')}\n".encode())
    return h.hexdigest()[:16]


def cost_summary(rows: list[dict]) -> dict:
    """Mean per-question cost; a batch's time is shared by its questions (amortised)."""
    n = max(1, len(rows))
    per = {k: sum(r["latency_s"].get(k, 0.0) / r["batch_size"] for r in rows) / n
           for k in ("prefill", "rollout", "decode")}
    total = sum(per.values())
    return {
        "mean_latency_s": {**{k: round(v, 6) for k, v in per.items()}, "total": round(total, 6)},
        "questions_per_s": round(1.0 / total, 3) if rows and total > 0 else None,
        "mean_load_s": round(sum(r.get("load_s", 0.0) for r in rows) / n, 6),
        "mean_generated_tokens": round(sum(r["generated_tokens"] for r in rows) / n, 3),
        "latent_steps": rows[0]["latent_steps"] if rows else None,
        "peak_memory_mb": round(_peak_memory_mb(), 1),
    }


def finalize(out: Path, benchmark: str, items: Sequence[EvalItem], preds: list[dict],
             fails: list[dict], settings: dict, warnings: list[str],
             breakdown_keys: Sequence[str]) -> dict:
    """Score the merged predictions and write results.json / results.md (atomically)."""
    from stormvl.tasks.score import Predictions, render_table, score, write_results

    known = {it.id for it in items}
    rows = [r for r in preds if str(r["id"]) in known]  # a --limit run scores its items only
    fails = [f for f in fails if str(f["id"]) in known]
    result = score(benchmark, items, Predictions({str(r["id"]): r["response"] for r in rows}),
                   breakdown_keys)
    result["failed"] = len(fails)
    result["failed_items"] = [{"id": f["id"], "error": f["error"]} for f in fails[:50]]
    result["cost"] = cost_summary(rows)
    result["reproducibility"] = {
        **settings,
        "frame_indices_sha256": _frame_hash(rows),
        "packages": package_versions(),
        "torch_device": str(torch.cuda.get_device_name()) if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),  # CPU latency depends on it
        "cpu": cpu_description(),  # ... and on the CPU
        "warnings": warnings,
    }
    write_results(out / "results.json", result)
    c = result["cost"]
    lat = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in c["mean_latency_s"].items())
    md = [f"# {benchmark}: {settings['method']} ({settings['checkpoint']})", "", "```",
          render_table(result), "```", "",
          f"- failed to load: {len(fails)} (counted as missing, so wrong)",
          f"- mean latency per question: {lat}",
          f"- generated tokens: {c['mean_generated_tokens']}, latent steps K = {c['latent_steps']}",
          f"- video: {settings['video']}",
          f"- checkpoint sha: {settings['checkpoint_sha']}, frames sha: "
          f"{result['reproducibility']['frame_indices_sha256']}"]
    md += [f"- warning: {w}" for w in warnings]
    write_text_atomic(out / "results.md", "\n".join(md) + "\n")
    return result


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def answer_question(runner: Runner, video: str | Path, question: str,
                    options: Sequence[str] = ()) -> dict:
    """Answer one question about one video with the method's layout; returns the reply, the
    latency split and what was sampled. Without options the question is open-ended: the reply
    decodes until the end token or the free-form budget (``Runner.run``).

    Raises:
        UserError: the video is missing or cannot be decoded.
    """
    from stormvl.latent import format_question

    video = Path(video)
    if not video.is_file():
        raise UserError(f"--video {video}: file not found")
    item = EvalItem("answer", "answer", video, format_question(question, list(options) or None), "",
                    format="mc" if options else "open_ended", question=question,
                    options=list(options))
    p = runner.prepare(item)
    res = runner.run([p])
    return _row(p, res.texts[0], res, 0, 1, runner.gen["k"], runner.model.writes_rationale)
