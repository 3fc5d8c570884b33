"""``stormvl demo``: data -> five methods trained -> evaluated -> diagnosed -> reported.

Read top to bottom: ``run_demo`` calls one function per stage. Every stage writes its output
atomically under ``out/`` and is skipped when that output exists, so a killed demo resumes
where it stopped (training itself resumes from its last checkpoint).

    out/demo.json                  the preset (a re-run with another preset is refused)
    out/data/{train,val,test,ood}  the built-in suite (and out/data/ood-<shift>, OOD_SHIFTS)
    out/data/train-degraded/       train with degraded thought videos (thought_degrade)
    out/runs/<method>/seed<s>/     training runs (storm: stage1/ and stage2/)
    out/eval/<method>/seed<s>/<split>/   predictions + results per split
    out/eval/thought_video_cost.json    the renderer's seconds per thought video (oracle's cost)
    out/curves/<method>/seed<s>/step-<n>/ val results of intermediate checkpoints
    out/diag/<method>/seed<s>.json latent diagnostics
    out/diag/retrieval/seed<s>.json thought-video retrieval: latents vs textcot vs random
    out/results.json, report.md, index.html, *.png
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from stormvl.demo.presets import METHODS, OOD_SHIFTS, Preset, shift_render
from stormvl.demo.schedule import Job, Log, Task, in_workers, task_order
from stormvl.demo.timing import recover_interrupted, timed
from stormvl.errors import UserError
from stormvl.io import read_json, write_json_atomic

# settings that never change a run's numbers: how fast the demo goes (and the time it is
# meant to take), and how many runs it holds (a folder can be extended with more seeds or
# methods, or reported on a subset)
SPEED_ONLY = ("parallel", "synth_workers", "data_workers", "minutes")
EXTENT = ("seeds", "methods", "ood_shifts")
STAGE1_DIAG = "storm (end of Stage I)"  # diagnostics row of storm's last Stage-I checkpoint


def _check_preset(out: Path, preset: Preset) -> dict:
    """A demo folder belongs to one preset; mixing two would mix their numbers.

    Returns the record to keep in ``out/demo.json`` once the data stage has accepted the
    folder (a refused folder is left as it was).
    """
    record = out / "demo.json"
    want = dataclasses.asdict(preset)
    want = json.loads(json.dumps(want))  # tuples -> lists, as stored
    if record.exists():
        have = read_json(record)
        # a setting added after the folder was made counts as its default there
        defaults = json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(Preset)
                                          if f.default is not dataclasses.MISSING}))
        have = {**{k: v for k, v in defaults.items() if k not in have}, **have}
        diff = sorted(k for k in set(want) | set(have)
                      if k not in SPEED_ONLY + EXTENT and have.get(k) != want.get(k))
        if diff:
            raise UserError(f"{out}: holds a demo with other settings ({', '.join(diff)}); "
                            "use another --out")
    return want  # the extent and speed of the latest run


# --- stage 1: data -----------------------------------------------------------------------


def shared_cache(split: Path, kind: str) -> Path:
    """A cache every run, evaluation and diagnostic of this demo shares, beside the splits:
    ``clips`` (decoded clips: only the first reader of a clip decodes it) or ``targets``
    (storm's Stage-I targets: the fixed encoder is the same for every seed, so only the
    first storm run builds them)."""
    return split.parent / kind


def make_data(preset: Preset, root: Path, log: Log) -> dict[str, Path]:
    """Generate the four splits and the ood shifts (resumable: the suite builder skips
    finished items). A shift's questions are test questions (the trained level) drawn with
    their own seed and rendered with the shift's frames and size."""
    from stormvl.synth import build_suite
    from stormvl.synth.build import SuiteMismatch

    sizes = {"train": preset.n_train, "val": preset.n_val, "test": preset.n_test}
    if "ood" in preset.ood_splits:
        sizes["ood"] = preset.n_ood
    jobs = [(split, split, n, 1000 + i, preset.frames, preset.size)
            for i, (split, n) in enumerate(sizes.items())]
    for shift in preset.ood_shifts:
        frames, size = shift_render(preset.frames, preset.size, shift)
        jobs.append((shift, "test", preset.n_ood, 1004 + list(OOD_SHIFTS).index(shift), frames, size))
    dirs = {}
    for name, split, n, seed, frames, size in jobs:
        d = root / name
        have = _rows(d / "manifest.jsonl")  # a resumed demo says what it found
        log(f"[data] {name}: {n} questions" + (": found done" if have >= n else
                                               f" ({have} found)" if have else ""))
        try:
            build_suite(d, n, families=list(preset.families) or None, split=split,
                        difficulty=preset.difficulty, frames=frames, size=size,
                        seed=seed, workers=preset.synth_workers, progress=False,
                        intro=preset.intro if split == "train" else 0.0,
                        option_order=preset.option_order)
        except SuiteMismatch as exc:  # e.g. made by an earlier generator version
            why = (f"holds a suite this demo cannot extend (differs in: {', '.join(exc.differs)})"
                   if exc.differs else "is not empty and holds no suite")
            raise UserError(f"{d}: {why}; use another --out (`stormvl report` still rebuilds "
                            "the report of an earlier demo)") from None
        dirs[name] = d
    if preset.thought_degrade:
        dirs["train"] = degraded_thoughts(dirs["train"], dict(preset.thought_degrade), log)
    return dirs


def degraded_thoughts(train: Path, settings: dict, log: Log) -> Path:
    """``train``'s rows with their exact thought videos redrawn through ``degrade`` (the
    suite's renderer, then the corruptions, seeded per sample): storm's Stage-I targets
    then come from these. The runner writes its manifest last, so a folder that has one is
    finished; a killed run starts over (4,000 small renders: minutes)."""
    from stormvl.thoughts import run_thoughts
    from stormvl.thoughts.base import build_from_dict

    out = train.parent / "train-degraded"
    if (out / "manifest.jsonl").is_file():
        log(f"[data] train-degraded ({_spec(settings)}): found done")
        return out
    log(f"[data] train-degraded: redrawing the thought videos ({_spec(settings)})")
    gen = build_from_dict("degrade", {"inner": "procedural", **settings}, "preset thought_degrade")
    gen.load()
    stats = run_thoughts(train / "manifest.jsonl", out, gen, overwrite=True, progress=False,
                         log=_silent)
    if stats.skipped:
        raise UserError(f"{out}: {len(stats.skipped)} thought videos could not be degraded "
                        f"(see {out / 'stats.json'})")
    return out


def _spec(settings: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in settings.items())


# --- stage 2: training -------------------------------------------------------------------


def _rows(manifest: Path) -> int:
    """Lines of a manifest (0 when there is none): what a resumed data stage finds."""
    if not manifest.is_file():
        return 0
    with manifest.open("rb") as f:
        return sum(1 for line in f if line.strip())


def train_config(preset: Preset, method: str, seed: int, manifest: Path, out: Path,
                 steps: int, stage: int = 1, stage1: Path | None = None, init: Path | None = None):
    """The trainer config of one method run; every method shares the preset's budget.

    ``init``: a checkpoint to start from (latent / storm from textcot's) instead of a fresh
    backbone; it then also gets the preset's rationale curriculum (Stage I for storm).
    """
    from stormvl.config import from_dict
    from stormvl.training.config import TrainConfig

    data = {
        "out_dir": str(out),
        "seed": seed,
        # from scratch (or from textcot's checkpoint: `init`); Stage-I targets always come
        # from a fixed encoder (a tower trained by the same loss collapsed with the latents)
        "model": {"backbone": str(init) if init else preset.backbone, "init_seed": seed,
                  "freeze_vision": preset.freeze_vision},
        "method": {"name": method, "k": preset.k, "stage": stage,
                   "stage1_checkpoint": str(stage1) if stage1 else None,
                   "oracle_frames": max(1, preset.frames // 2),
                   "bottleneck": preset.bottleneck and method in ("latent", "storm"),
                   "internalize_at": list(preset.internalize_at) if init and stage == 1 else []},
        "targets": {"encoder": preset.target_encoder, "frames": preset.frames,
                    "cache_dir": str(shared_cache(manifest.parent, "targets"))},
        "align": {"weight": preset.align_weight},
        "data": {"train": str(manifest), "split": "train", "num_workers": preset.data_workers,
                 "prompt": preset.prompt,
                 "cache_decoded": True,  # many epochs over small clips
                 "clip_cache": str(shared_cache(manifest.parent, "clips"))},
        "video": {"num_frames": preset.frames, "max_pixels": frame_pixel_bound(preset.size),
                  "min_pixels": 16 * 16},
        "optim": {"lr": preset.lr * (preset.stage2_lr_scale if stage == 2 else 1.0),
                  "max_steps": steps, "batch_size": preset.batch_size,
                  "warmup_steps": max(1, steps // 10)},
        "checkpoint": {"every": preset.checkpoint_every(steps), "keep_last": preset.curve_points + 2},
        "log": {"tensorboard": False, "progress": False},
    }
    return from_dict(TrainConfig, data, f"demo preset {preset.name}")


def frame_pixel_bound(size: int) -> int:
    """A per-frame pixel bound that keeps a ``size`` x ``size`` frame at full resolution.

    The smart resize rounds each side to the nearest multiple of the patch factor (28 for
    Qwen2.5-VL, 32 for Qwen3-VL) and scales the frame *down* when that exceeds the bound;
    ``size * size`` as the bound turned 48-pixel frames into 28 x 28 (one token per frame
    pair), which no method could learn from. Rounding can add at most half a factor.
    """
    return (size + 16) ** 2


def _train_once(cfg, log: Log) -> list[tuple[int, Path]]:
    """Train (or resume, or skip when finished); returns the run's checkpoints by step."""
    from stormvl.training import checkpoint as ckpt
    from stormvl.training.loop import train

    found = ckpt.list_checkpoints(cfg.out_dir)
    if not found or found[-1][0] < cfg.optim.max_steps:
        log(f"[train] {cfg.method.name} stage {cfg.method.stage} seed {cfg.seed}: "
            f"{cfg.optim.max_steps} steps -> {cfg.out_dir}")
        train(cfg, resume=bool(found))
    else:
        log(f"[train] {cfg.method.name} stage {cfg.method.stage} seed {cfg.seed}: found done")
    return ckpt.list_checkpoints(cfg.out_dir)


def run_stages(preset: Preset, method: str) -> list[tuple[str, int, int]]:
    """A run's training stages: (sub-folder, the global step it starts at, its own steps).

    storm trains Stage I then Stage II (``stage1/``, ``stage2/``) within the same step
    budget; the other methods one stage in the run's folder. With ``latent_from_textcot`` = N
    latent and storm start at step N, from textcot's checkpoint there.
    """
    start = preset.latent_from_textcot if method in ("latent", "storm") else 0
    if method != "storm":
        return [("", start, preset.steps - start)]
    s1 = preset.stage1_steps(preset.steps - start)
    return [("stage1", start, s1), ("stage2", start + s1, preset.steps - start - s1)]


def stage_checkpoints(preset: Preset, method: str, out: Path
                      ) -> list[tuple[int, int, list[tuple[int, Path]]]]:
    """Per training stage of the run in ``out`` (``run_stages``): the global step it starts
    at, its own steps, and its checkpoints on disk by its own step."""
    from stormvl.training import checkpoint as ckpt

    return [(first, steps, ckpt.list_checkpoints(out / sub))
            for sub, first, steps in run_stages(preset, method)]


def finished_checkpoints(preset: Preset, method: str, out: Path) -> list[tuple[int, Path]] | None:
    """A run's checkpoints by global step, oldest first, once every stage has trained to its
    last step; None before that."""
    found = []
    for first, steps, ckpts in stage_checkpoints(preset, method, out):
        if steps and (not ckpts or ckpts[-1][0] < steps):  # 0 steps: storm's Stage I only
            return None
        found += [(first + step, p) for step, p in ckpts]
    return found


def train_method(preset: Preset, method: str, seed: int, manifest: Path, out: Path,
                 log: Log) -> list[tuple[int, Path]]:
    """Train one run, stage by stage (``run_stages``), resuming a stopped one.

    Returns (global step, checkpoint) pairs, oldest first; the last is the final model.
    """
    stages, init, stage1 = run_stages(preset, method), None, None
    start = stages[0][1]
    if start:
        from stormvl.training import checkpoint as ckpt

        init = ckpt.step_dir(out.parent.parent / "textcot" / out.name, start)
        if not (init / "stormvl.json").is_file():
            raise UserError(f"{method} seed {seed} starts from textcot's checkpoint {init}, which "
                            "does not exist: train textcot first (include it in --methods)")
    for sub, _, steps in (s for s in stages if s[2]):  # stage1: None, then Stage I's last
        cfg = train_config(preset, method, seed, manifest, out / sub, steps,
                           stage=2 if sub == "stage2" else 1, stage1=stage1, init=init)
        stage1 = _train_once(cfg, log)[-1][1]
    ckpts = finished_checkpoints(preset, method, out)
    if ckpts is None:  # the trainer saves its last step: a bug, not bad input
        raise RuntimeError(f"{out}: {method} seed {seed} trained, but its last checkpoint is missing")
    return ckpts


def by_seed(jobs) -> list[Job]:
    """(method, seed) keys in report order: seed, then the preset's method order."""
    return sorted(jobs, key=lambda j: (j[1], METHODS.index(j[0])))


Score = Callable[[Job, list], object]  # a finished run's scoring, picklable (see _score_job)


def train_all(preset: Preset, manifest: Path, out: Path, log: Log, score: Score | None = None,
              found: Callable[[Task], float] | None = None
              ) -> tuple[dict[Job, list[tuple[int, Path]]], dict[Job, object]]:
    """Train every (method, seed) run, ``preset.parallel`` at a time, and ``score`` each one
    that has finished in the same workers (``found``: the share of a task done before, see
    ``run_jobs``).

    Why processes: the tiny model's ops are too small to use two cores well, so two runs
    side by side with one thread each train ~2x faster than one run with two threads. Each
    run writes only its own folder and resumes on its own, so parallel and serial give the
    same layout. Why scoring in the same pool: a run's scoring waits only for its own
    training, and training always goes first, so scoring fills the time a worker would idle
    (the last run training alone at the end: ~2 minutes of the full preset).

    Returns:
        ({job: (global step, checkpoint) pairs}, {job: what ``score`` returned}), by seed
    """
    tasks, after = task_order(preset, score is not None)
    # print: `log` may not pickle
    fn = partial(_task, preset, manifest, out, print if preset.parallel > 1 else log, score)
    done = in_workers(preset, tasks, after, fn, log, "train", partial(task_steps, preset), found)
    order = by_seed(job for kind, job in tasks if kind == "train")
    return ({job: done["train", job] for job in order},
            {job: done["score", job] for job in order if ("score", job) in done})


def task_steps(preset: Preset, task: Task) -> int | None:
    """A training task's own optimizer steps (latent and storm from textcot's checkpoint
    train only the rest of the budget); None for scoring (the time-left estimate's size)."""
    kind, (method, _) = task
    return sum(steps for _, _, steps in run_stages(preset, method)) if kind == "train" else None


def _task(preset: Preset, manifest: Path, out: Path, log: Log, score: Score | None,
          task: tuple[str, Job]):
    """One pool task: ``("train", job)``, or ``("score", job)`` once that run has finished
    (its checkpoints are listed again here: training a finished run only lists them)."""
    kind, (method, seed) = task
    quiet = kind == "score"  # its training task said what it did or found
    ckpts = train_method(preset, method, seed, manifest, out / method / f"seed{seed}",
                         _silent if quiet else log)
    return ckpts if kind == "train" else score((method, seed), ckpts)


def _silent(line: str) -> None:
    """A log that drops its lines (picklable, unlike a lambda)."""


# --- stage 3: evaluation -----------------------------------------------------------------


def evaluate_checkpoint(ckpt_dir: Path, jobs: list[tuple[Path, Path]], batch: int) -> list[dict]:
    """Evaluate one checkpoint on splits of the suite: ``jobs`` = (data dir, out dir) pairs.

    The model is loaded once, and not at all when every split is already scored.
    """
    from stormvl import evaluation
    from stormvl.tasks import load_benchmark

    runner, results = None, []
    for data_dir, out in jobs:
        done = out / "results.json"
        if done.exists():
            results.append(read_json(done))
            continue
        if runner is None:
            settings = evaluation.EvalSettings(batch_size=batch,
                                               clip_cache=str(shared_cache(data_dir, "clips")))
            runner = evaluation.Runner(evaluation.load_model(ckpt_dir), settings)
        items = load_benchmark("synth", data_dir)
        results.append(evaluation.run_eval(runner, "synth", items, out, data=data_dir, progress=False))
    return results


def score_places(preset: Preset, out: Path, job: Job, ckpts: list[tuple[int, Path]]
                 ) -> tuple[list[dict[str, Path]], dict[str, Path]]:
    """Where one finished run's scoring writes: for each checkpoint, {split: results folder}
    (val for every one, the ood splits too for the final one); and {diagnostics row: json}
    (latent; storm, and storm at the end of its Stage I)."""
    method, seed = job
    places = []
    for i, (step, _) in enumerate(ckpts):
        where = {"val": out / "curves" / method / f"seed{seed}" / f"step-{step}"}
        if i == len(ckpts) - 1:
            where |= {sp: out / "eval" / method / f"seed{seed}" / sp for sp in preset.ood_splits}
        places.append(where)
    diag = out / "diag" / method
    rows = {"latent": {"latent": diag / f"seed{seed}.json"},
            "storm": {"storm": diag / f"seed{seed}.json",
                      STAGE1_DIAG: diag / f"seed{seed}_stage1.json"}}
    return places, rows.get(method, {})


def task_share_done(preset: Preset, out: Path, task: Task) -> float:
    """The share of a pool task whose output is on disk (1: all of it): a resumed demo finds
    such tasks done at once, or in part, and its time-left estimate must not take their
    seconds for what a whole task takes. A training run's share is its checkpointed steps
    (where it resumes); a scoring task is done or not."""
    kind, (method, seed) = task
    run = out / "runs" / method / f"seed{seed}"
    if kind == "train":
        stages = stage_checkpoints(preset, method, run)
        trained = sum(min(ckpts[-1][0], steps) for _, steps, ckpts in stages if ckpts)
        return trained / sum(steps for _, steps, _ in stages)
    ckpts = finished_checkpoints(preset, method, run)
    if ckpts is None:
        return 0.0
    places, diags = score_places(preset, out, (method, seed), ckpts)
    return float(all((d / "results.json").is_file() for where in places for d in where.values())
                 and all(p.is_file() for p in diags.values()))


def _score_job(preset: Preset, data: dict[str, Path], out: Path, log: Log, job: Job,
               ckpts: list[tuple[int, Path]]):
    """What of one run's evaluation measures no time (``score_places``): every checkpoint on
    val (the curve), the final one on the ood splits, and the latent diagnostics for latent /
    storm.

    Returns:
        ({(method, seed, split): result}, [(step, val accuracy)], {(row, seed): diagnostics})
    """
    from stormvl.diagnostics.alignment import checkpoint_stage
    from stormvl.diagnostics.run import diagnose

    method, seed = job
    places, diag_json = score_places(preset, out, job, ckpts)
    done = all((d / "results.json").is_file() for where in places for d in where.values())
    log(f"[eval] {method} seed {seed}: val curve, {', '.join(preset.ood_splits)}"
        + (": found done" if done else ""))
    evals, curve = {}, []
    for (step, p), where in zip(ckpts, places, strict=True):
        jobs = [(data[sp], d) for sp, d in where.items()]
        scored = dict(zip(where, evaluate_checkpoint(p, jobs, preset.eval_batch), strict=True))
        curve.append((step, scored.pop("val")["overall"]))
        evals |= {(method, seed, sp): r for sp, r in scored.items()}
    clips, diags = shared_cache(data["test"], "clips"), {}
    for row, path in diag_json.items():
        log(f"[diagnostics] {row} seed {seed}" + (": found done" if path.is_file() else ""))
        # storm's end of Stage I gets the same interventions: were the latents used while
        # they were being aligned, and did answer-only Stage II make the model drop them?
        at = [(step, p) for step, p in ckpts if checkpoint_stage(p) == 1] if row == STAGE1_DIAG else ckpts
        diags[row, seed] = diagnose(
            at, data["test"], path, preset, alignment=row == "storm", clip_cache=clips,
            figure=out / f"latents_{method}_seed{seed}.png" if seed == 0 and row == method else None)
    return evals, curve, diags


def _test_job(preset: Preset, data: dict[str, Path], out: Path, runs: dict, log: Log,
              job: Job) -> dict:
    """One run's final checkpoint on test: the accuracy and the latency the report shows."""
    method, seed = job
    where = out / "eval" / method / f"seed{seed}" / "test"
    log(f"[test] {method} seed {seed}" + (": found done" if (where / "results.json").is_file() else ""))
    return evaluate_checkpoint(runs[job][-1][1], [(data["test"], where)], preset.eval_batch)[0]



def _retrieval(preset: Preset, data: dict[str, Path], out: Path, runs: dict, log: Log) -> dict:
    """Same-question thought-video retrieval of each seed's latent and storm latents against
    textcot's rationale states and random vectors (``diagnostics.retrieval``); textcot's run
    counts when it is in this folder finished, trained here or linked in from another."""
    from stormvl.diagnostics.retrieval import seed_retrieval

    found = {("textcot", s): finished_checkpoints(preset, "textcot", out / "runs" / "textcot" / f"seed{s}")
             for s in range(preset.seeds)}
    runs = {**{job: c for job, c in found.items() if c}, **runs}
    return seed_retrieval(runs, data["test"], out / "diag" / "retrieval", preset.diag_n,
                          preset.eval_batch, log, shared_cache(data["test"], "clips"))

@contextmanager
def torch_threads(n: int):
    """Torch's intra-op thread count set to ``n`` for the block, then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the whole demo ----------------------------------------------------------------------


def run_demo(preset: Preset, out: str | Path, log: Log = print) -> dict:
    """Run every stage; returns the results dict also written to ``out/results.json``."""
    from stormvl.io import exclusive_folder

    out = Path(out)
    with exclusive_folder(out, "stormvl demo"):
        return _run_demo(preset, out, log)


def _run_demo(preset: Preset, out: Path, log: Log) -> dict:
    from stormvl.demo.assemble import assemble_results
    from stormvl.report.demo_report import write_report

    record = _check_preset(out, preset)
    recover_interrupted(out, log)
    with timed(out, "data", preset):
        data = make_data(preset, out / "data", log)
    write_json_atomic(out / "demo.json", record)
    with timed(out, "train", preset):
        # what of the evaluation measures no time is done in the training workers as runs
        # finish: val curves, ood splits, diagnostics
        score = partial(_score_job, preset, data, out, print if preset.parallel > 1 else log)
        runs, scored = train_all(preset, data["train"] / "manifest.jsonl", out / "runs", log, score,
                                 partial(task_share_done, preset, out))
    # each run's test split here, one run at a time on one thread: latency is among what it
    # measures. Runs evaluated side by side share the cores (the same checkpoints in two
    # one-thread processes: storm 0.31 x textcot's latency, one at a time 0.25), and two
    # threads made the tiny model's decoding 2x slower than one (textcot 40 vs 19 ms a
    # question, storm 8.2 vs 6.4: two threads flattered storm against textcot)
    with timed(out, "eval", preset), torch_threads(1):
        tested = {job: _test_job(preset, data, out, runs, log, job) for job in runs}
        retrieval = _retrieval(preset, data, out, runs, log)
    evals, curves, diags = {}, {}, {}
    for job in by_seed(runs):
        part_evals, curves[job], part_diags = scored[job]
        evals |= part_evals | {(*job, "test"): tested[job]}
        diags |= part_diags
    diags |= {key: {**diags[key], "retrieval": r} for key, r in retrieval.items() if key in diags}
    results = assemble_results(preset, out, evals, curves, diags)
    write_report(results, out)
    return results
