"""The ``stormvl`` command line: one thin function per subcommand.

Each command parses flags, calls library code, and prints. A ``UserError`` anywhere below, a
usage mistake (every missing option named at once) and a full disk each become one
``error: <message>`` line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path

import typer

from stormvl.errors import UserError
from stormvl.io import disk_full_message, is_disk_full, quiet_libraries, read_json

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="stormvl: latent spatial-temporal reasoning for video-language models.",
    pretty_exceptions_enable=False,
)


def _not_ready(what: str, issue: int) -> None:
    raise UserError(f"'{what}' is not implemented yet (tracked in issue {issue})")


@app.command()
def families() -> None:
    """List the procedural task families, one line each."""
    from stormvl.synth import FAMILIES

    width = max(map(len, FAMILIES))
    for name, fam in FAMILIES.items():
        print(f"{name:<{width}}  {fam.description}")


@app.command()
def synth(
    out: str = typer.Option(..., "--out", help="Output directory."),
    n: int = typer.Option(..., "--n", help="Total number of items, spread evenly over the families."),
    families: str = typer.Option("all", "--families", help="Comma-separated family names."),
    split: str = typer.Option("train", "--split", help="train | val | test | ood"),
    difficulty: str = typer.Option("mixed", "--difficulty", help="easy | medium | hard | mixed"),
    frames: int = typer.Option(16, "--frames", help="Frames per video (>= 8)."),
    size: int = typer.Option(64, "--size", help="Frame height = width in pixels (even, >= 32)."),
    seed: int = typer.Option(0, "--seed", help="Suite seed."),
    workers: int = typer.Option(1, "--workers", help="Worker processes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty DIR."),
    intro: float = typer.Option(
        0.0, "--intro", help="Share of items at each family's foothold level (training data)."),
    option_order: str = typer.Option(
        "shuffled", "--option-order", help="shuffled (balanced letters) | canonical"),
) -> None:
    """Generate the procedural suite: videos, thought videos and a manifest."""
    from stormvl.synth import build_suite

    path = build_suite(
        out, n, families, split, difficulty, frames, size, seed, workers, overwrite,
        progress=True, intro=intro, option_order=option_order,
    )
    print(f"wrote {path}")


@app.command()
def audit(
    directory: str = typer.Argument(..., help="Suite folder with train and test items."),
    out: str = typer.Option(None, "--out", help="JSON file for the results (default DIR/audit.json)."),
    workers: int = typer.Option(1, "--workers", help="Processes decoding videos."),
) -> None:
    """Score cheap shortcut baselines on a generated suite (anti-shortcut audit)."""
    from stormvl.synth.audit import format_table, run_audit

    result, path = run_audit(directory, out, workers=workers)
    print(format_table(result))
    print(f"wrote {path}")


thoughts_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Make thought videos for a manifest with a generator (sharded, resumable).",
)
app.add_typer(thoughts_app, name="thoughts")


@thoughts_app.callback(invoke_without_command=True)
def thoughts(
    ctx: typer.Context,
    manifest: Path | None = typer.Option(None, "--manifest", help="Input manifest (JSONL)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder DIR."),
    generator: str | None = typer.Option(None, "--generator", help="procedural, diffusers or degrade."),
    config: Path | None = typer.Option(None, "--config", help="Generator config YAML."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value (repeatable)."),
    shard: str | None = typer.Option(None, "--shard", help="Process rows with index % n == i (i/n)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate rows that are already done."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar with ETA."),
) -> None:
    """Make thought videos for a manifest with a generator (sharded, resumable).

    Writes DIR/thoughts/<id>.mp4 and DIR/manifest.jsonl (or DIR/manifest.shard-i-of-n.jsonl),
    then prints seconds per thought video and GPU memory (also in DIR/stats*.json).
    """
    if ctx.invoked_subcommand is not None:
        return
    from stormvl.thoughts import build_generator, parse_shard, run_thoughts

    missing = [f for f, v in (("--manifest", manifest), ("--out", out), ("--generator", generator)) if v is None]
    if missing:
        raise UserError(f"stormvl thoughts: missing {', '.join(missing)}")
    shard_t = parse_shard(shard)
    gen = build_generator(generator, str(config) if config else None, overrides)
    gen.load()  # missing weights / no GPU fail here, before any row is touched
    stats = run_thoughts(manifest, out, gen, shard_t, overwrite, progress,
                         log=lambda msg: typer.echo(msg, err=True))
    typer.echo("\n".join(stats.describe()))


@thoughts_app.command("merge")
def thoughts_merge(
    dirs: list[Path] = typer.Argument(..., help="Output folder(s) holding the shard results."),
    out: Path | None = typer.Option(None, "--out", help="Merged folder (default: the first DIR)."),
) -> None:
    """Merge shard manifests into one DIR/manifest.jsonl, checking every shard finished."""
    from stormvl.thoughts import merge_shards

    stats = merge_shards(dirs, out)
    typer.echo(f"merged {len(stats.ids)} rows from shards into {(out or dirs[0]) / 'manifest.jsonl'}")
    typer.echo("\n".join(stats.describe()))


@app.command(context_settings={"allow_extra_args": False})
def train(
    config: str = typer.Argument(..., help="YAML run config (see configs/ and docs/training.md)"),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. optim.lr=1e-4"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint"),
) -> None:
    """Train a method (direct, textcot, latent, storm stage 1/2, oracle) from a YAML config."""
    from stormvl.config import load_config
    from stormvl.distributed import end_process_group
    from stormvl.training.config import TrainConfig
    from stormvl.training.loop import train as run_training

    cfg = load_config(TrainConfig, config, overrides or [])
    final = run_training(cfg, resume=resume)
    end_process_group()
    print(f"done: {final}")


@app.command()
def export(
    checkpoint: str = typer.Argument(..., help="a LoRA training checkpoint folder"),
    out: str = typer.Argument(..., help="where to write the merged Hugging Face checkpoint"),
) -> None:
    """Merge LoRA adapters into a full Hugging Face checkpoint."""
    from stormvl.training.build import export_merged

    print(f"exported: {export_merged(checkpoint, out)}")


@app.command()
def score(
    benchmark: str = typer.Option(
        ..., "--benchmark", help="videomme | mvbench | tempcompass | mmvu | synth"),
    data: Path = typer.Option(..., "--data", help="The benchmark's local dataset folder."),
    predictions: Path = typer.Option(
        ..., "--predictions", help='JSONL lines {"id": ..., "response": "..."}.'),
    out: Path | None = typer.Option(None, "--out", help="Write results JSON here."),
    subtitles: bool = typer.Option(
        False, "--subtitles", help="VideoMME: the replies came from the with-subtitles prompt."),
    tasks: str | None = typer.Option(
        None, "--tasks", help="MVBench: comma-separated tasks to score (default: all 20)."),
    judge_url: str | None = typer.Option(
        None, "--judge-url", help="OpenAI-compatible base URL of an LLM judge (off by default)."),
    judge_model: str = typer.Option("gpt-4o-mini", "--judge-model", help="Judge model name."),
    judge_key_env: str = typer.Option(
        "OPENAI_API_KEY", "--judge-key-env", help="Environment variable holding the judge key."),
    judge_cache: Path | None = typer.Option(
        None, "--judge-cache", help="Judge answer cache (JSONL); default beside --out."),
) -> None:
    """Score raw model replies on a benchmark as the standard harness does."""
    from stormvl.tasks import breakdowns, load_benchmark
    from stormvl.tasks import score as scoring

    items = load_benchmark(benchmark, data, subtitles=subtitles, check_media=False,
                           tasks=_task_list(tasks))
    preds = scoring.read_predictions(predictions)
    judge = None
    if judge_url:
        from stormvl.tasks.judge import Judge, JudgeConfig

        cache = judge_cache or (out.with_suffix(".judge_cache.jsonl") if out else
                                Path("stormvl_judge_cache.jsonl"))
        judge = Judge(JudgeConfig(judge_url, judge_model, judge_key_env, str(cache)))
    try:
        result = scoring.score(benchmark, items, preds, breakdowns(benchmark), judge)
    finally:
        if judge is not None:
            judge.close()
    result["settings"] = {"data": str(data), "predictions": str(predictions),
                          "subtitles": subtitles, "tasks": _task_list(tasks),
                          "judge_model": judge_model if judge else None}
    print(scoring.render_table(result))
    if out is not None:
        scoring.write_results(out, result)
        print(f"wrote {out}")


def _task_list(tasks: str | None) -> list[str] | None:
    """``--tasks a,b`` -> ["a", "b"] (None: every task)."""
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    return names or None


@app.command(name="eval")
def evaluate(
    model: str = typer.Option(
        ..., "--model", help="A checkpoint folder, or a training run's (its newest checkpoint)."),
    benchmark: str = typer.Option(
        ..., "--benchmark", help="videomme | mvbench | tempcompass | mmvu | synth"),
    data: Path = typer.Option(..., "--data", help="The benchmark's local dataset folder."),
    out: Path = typer.Option(..., "--out", help="Output folder (re-run to resume)."),
    frames: int | None = typer.Option(None, "--frames", help="Uniform frames (default: checkpoint's)."),
    fps: float | None = typer.Option(None, "--fps", help="Sample frames by rate instead."),
    k: int | None = typer.Option(None, "--k", help="Latent steps (latent/storm checkpoints)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N items."),
    batch_size: int = typer.Option(8, "--batch-size", help="Questions per generate call."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Reply budget (default 16; textcot 256)."),
    subtitles: bool = typer.Option(False, "--subtitles", help="VideoMME with subtitles."),
    tasks: str | None = typer.Option(
        None, "--tasks", help="MVBench: comma-separated tasks to run (default: all 20)."),
    max_failed_share: float = typer.Option(
        0.05, "--max-failed-share",
        help="The run fails (exit 2) when more than this share of items fail to load."),
    device: str = typer.Option("auto", "--device", help="cpu | cuda[:i] | auto."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Run a trained model over a benchmark; resumable, with cost accounting."""
    import os

    from stormvl.distributed import end_process_group
    from stormvl.evaluation import EvalSettings, Runner, load_model, run_eval
    from stormvl.evaluation.run import failure_lines
    from stormvl.tasks import load_benchmark
    from stormvl.tasks.score import render_table

    world, barrier, rank = int(os.environ.get("WORLD_SIZE", "1")), None, 0
    if world > 1:  # accelerate launch / torchrun: data parallel, one process per device
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        rank, barrier = state.process_index, state.wait_for_everyone
    items = load_benchmark(benchmark, data, subtitles=subtitles, check_media=False,
                           tasks=_task_list(tasks))
    settings = EvalSettings(num_frames=frames, fps=fps, k=k, limit=limit, batch_size=batch_size,
                            max_new_tokens=max_new_tokens, subtitles=subtitles)
    runner = Runner(load_model(model, device), settings)
    for w in runner.warnings:
        print(f"warning: {w}", file=sys.stderr)
    try:
        result = run_eval(runner, benchmark, items, out, data, rank, world, barrier,
                          progress and rank == 0, max_failed_share)
    finally:
        end_process_group()
    if result is not None:
        print(render_table(result))
        for line in failure_lines(result, out / "failed.jsonl"):
            print(line)
        print(f"wrote {out / 'results.json'}, {out / 'results.md'}")


@app.command()
def answer(
    model: str = typer.Option(
        ..., "--model", help="A checkpoint folder, or a training run's (its newest checkpoint)."),
    video: Path = typer.Option(..., "--video", help="The video file."),
    question: str = typer.Option(..., "--question", help="The question."),
    option: list[str] = typer.Option(
        None, "--option", help="An answer option (repeat); none: an open-ended question."),
    k: int | None = typer.Option(None, "--k", help="Latent steps (latent/storm checkpoints)."),
    frames: int | None = typer.Option(None, "--frames", help="Uniform frames (default: checkpoint's)."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens",
        help="Reply budget (default 16, textcot 256; without --option 256)."),
    device: str = typer.Option("auto", "--device", help="cpu | cuda[:i] | auto."),
) -> None:
    """Answer one question about one video, with latency (no --option: in words)."""
    from stormvl.evaluation import EvalSettings, Runner, answer_question, load_model

    if not video.is_file():  # before loading a model: a typo should fail fast
        raise UserError(f"--video {video}: file not found")
    settings = EvalSettings(num_frames=frames, k=k, max_new_tokens=max_new_tokens)
    runner = Runner(load_model(model, device), settings)
    for w in runner.warnings:
        print(f"warning: {w}", file=sys.stderr)
    row = answer_question(runner, video, question, option or [])
    lat = row["latency_s"]
    print(row["response"])
    print(f"latency: prefill {lat['prefill'] * 1000:.1f} ms, latent rollout "
          f"{lat['rollout'] * 1000:.1f} ms, decode {lat['decode'] * 1000:.1f} ms "
          f"({row['generated_tokens']} tokens, K = {row['latent_steps']}); "
          f"video load {row['load_s'] * 1000:.1f} ms", file=sys.stderr)


@app.command()
def serve(
    model: str = typer.Argument(..., help="A checkpoint folder (or a training run's folder)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    device: str = typer.Option("auto", "--device", help="cpu | cuda[:i] | auto."),
    max_batch: int = typer.Option(8, "--max-batch", help="Requests per engine call at most."),
    max_wait_ms: float = typer.Option(
        10.0, "--max-wait-ms", help="How long a ready request waits for others to join."),
    max_queue: int = typer.Option(
        64, "--max-queue", help="Requests in the server at once; past it 429 + Retry-After."),
    workers: int = typer.Option(
        2, "--workers", help="Processes preparing requests (decode, preprocess, tokenise)."),
    single_process: bool = typer.Option(
        False, "--single-process",
        help="Prepare and run the model in threads of the server process (no child processes)."),
    media_root: Path | None = typer.Option(
        None, "--media-root", help="Local video paths resolve under this folder (else refused)."),
    allow_remote_media: bool = typer.Option(
        False, "--allow-remote-media", help="Fetch http(s) video URLs (off by default)."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="STORMVL_API_KEY", show_default=False,
        help="Require 'Authorization: Bearer KEY' (prefer the environment variable)."),
    served_name: str | None = typer.Option(
        None, "--served-name", help="Model id clients send (default: MODEL's folder name)."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Request body limit."),
    max_tokens_cap: int = typer.Option(1024, "--max-tokens-cap", help="Largest max_tokens."),
    request_timeout_s: float = typer.Option(
        300.0, "--request-timeout-s", help="Arrival to answer, queue included (then 504)."),
    decode_timeout_s: float = typer.Option(
        30.0, "--decode-timeout-s", help="Video decode / fetch deadline per request."),
    max_video_s: float = typer.Option(3600.0, "--max-video-s", help="Longest source video."),
    max_input_frames: int = typer.Option(
        512, "--max-input-frames", help="Most image_url frames in one request."),
    max_input_pixels: int = typer.Option(
        4096 * 4096, "--max-input-pixels", help="Largest source frame (width x height)."),
) -> None:
    """OpenAI-compatible HTTP server that batches latent rollouts (docs/serving.md)."""
    from stormvl.serve import ServeConfig
    from stormvl.serve.server import run

    cfg = ServeConfig(
        host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
        workers=workers, single_process=single_process,
        media_root=str(media_root) if media_root else None,
        allow_remote_media=allow_remote_media, api_key=api_key, served_name=served_name,
        max_body_mb=max_body_mb, max_tokens_cap=max_tokens_cap,
        request_timeout_s=request_timeout_s, decode_timeout_s=decode_timeout_s,
        max_video_s=max_video_s, max_input_frames=max_input_frames,
        max_input_pixels=max_input_pixels)
    problems = cfg.validate()
    if problems:
        raise UserError("; ".join(problems))
    run(model, device, cfg)


@app.command()
def demo(
    preset: str = typer.Option("quick", help="quick (smoke run, minutes) | full (shell game, 5 seeds: the evidence, hours) | test | an experiment of docs/experiments.md"),
    seeds: int = typer.Option(None, help="training seeds per method (default: the preset's)"),
    methods: str = typer.Option(
        None, help="comma-separated subset of direct,textcot,latent,storm,oracle (default: all)"),
    out: Path = typer.Option(Path("runs/demo"), help="output folder (re-run to resume)"),
    parallel: int = typer.Option(
        None, help="training runs at once, the cores split between them (default: the preset's)"),
    bottleneck: bool = typer.Option(
        None, "--bottleneck/--no-bottleneck",
        help="latent and storm answer only through the latent chain (method.bottleneck; "
             "default: the preset's, on for full)"),
) -> None:
    """The whole method end to end on the built-in suite, with a report."""
    from stormvl.demo.experiments import EXPERIMENTS
    from stormvl.demo.pipeline import run_demo
    from stormvl.demo.presets import PRESETS
    from stormvl.report.demo_report import verdict

    known = PRESETS | EXPERIMENTS
    if preset not in known:
        raise UserError(f"--preset {preset!r}: choose from {', '.join(known)}")
    if seeds is not None and seeds < 1:
        raise UserError("--seeds must be >= 1")
    if parallel is not None and parallel < 1:
        raise UserError("--parallel must be >= 1")
    chosen = known[preset].with_seeds(seeds).with_methods(methods)
    chosen = chosen if parallel is None else dataclasses.replace(chosen, parallel=parallel)
    chosen = chosen if bottleneck is None else dataclasses.replace(chosen, bottleneck=bottleneck)
    results = run_demo(chosen, out, log=lambda m: print(m, flush=True))
    print(verdict(results, out))


@app.command()
def report(
    folder: Path = typer.Argument(..., help="a demo output folder with results.json; with "
                                 "--experiment, the folder holding one demo folder per preset"),
    experiment: str = typer.Option(None, help="join an experiment's folders into one table: "
                                   "stages | latents | thoughts | breadth (docs/experiments.md)"),
) -> None:
    """Rebuild report.md / index.html / figures from a demo folder's results.json alone; or,
    with --experiment, write FOLDER/<group>.{md,html,json,png} from its presets' folders."""
    from stormvl.report.demo_report import verdict, write_report

    if experiment:
        from stormvl.report.experiment_report import summary, write_experiment_report

        print(summary(write_experiment_report(folder, experiment)))
        print(f"page: {folder / (experiment + '.html')}  ({experiment}.md, {experiment}.json beside it)")
        return
    path = folder / "results.json"
    if not path.is_file():
        raise UserError(f"{path}: not found (run `stormvl demo --out {folder}` first)")
    results = read_json(path)
    write_report(results, folder)
    print(verdict(results, folder))


def _missing_params(argv: list[str]) -> list[str]:
    """Every required option / argument that ``argv`` leaves out of the command it names.

    Click stops at the first one; a second, resilient parse (no callbacks, no errors, as shell
    completion does) follows the subcommands and sees them all.
    """
    def rest(ctx) -> list[str]:  # what a group left for its subcommand (click < 8.2: public)
        return [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]

    ctx = typer.main.get_command(app).make_context("stormvl", list(argv), resilient_parsing=True)
    args = rest(ctx)
    while args and hasattr(ctx.command, "resolve_command"):
        name, cmd, args = ctx.command.resolve_command(ctx, args)
        if cmd is None:
            break
        ctx = cmd.make_context(name, args, parent=ctx, resilient_parsing=True)
        args = rest(ctx)
    return [p.opts[0] if p.param_type_name == "option" else p.name.upper()
            for p in ctx.command.get_params(ctx)
            if p.required and p.value_is_missing(ctx.params.get(p.name))]


def _usage_line(exc: Exception, argv: list[str]) -> str:
    """A usage error of the click layer as one line, naming the command and its help."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "stormvl"
    what = exc.format_message()
    if type(exc).__name__ == "MissingParameter":
        # (should the second parse fail, click's own message, naming the first, still holds)
        with contextlib.suppress(Exception):
            missing = _missing_params(argv)
            what = f"missing {', '.join(missing)}" if missing else what
    return f"{path}: {what} (see '{path} --help')"


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    quiet_libraries()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # (Ctrl-C comes back as 130, not raised; "stormvl" also under `python -m stormvl`)
        rc = app(args=argv, prog_name="stormvl", standalone_mode=False)
        if isinstance(rc, int) and rc:
            return rc
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command: its help
            exc.show()
            return 2
        # Usage errors (and the like) of the (vendored) click layer: format_message(), exit_code
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"error: {_usage_line(exc, argv)}", file=sys.stderr)
            return 2
        if is_disk_full(exc):  # a write not wrapped in io.writing: name what the OS names
            where = getattr(exc, "filename", None)
            print(f"error: {disk_full_message(where) if where else 'no space left on device'}",
                  file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
