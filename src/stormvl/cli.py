"""The ``stormvl`` command line: one thin function per subcommand.

Each command parses flags, calls library code, and prints. A ``UserError`` anywhere below
becomes ``error: <message>`` on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import typer

from stormvl.errors import UserError
from stormvl.io import quiet_libraries, read_json

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

    items = load_benchmark(benchmark, data, subtitles=subtitles, check_media=False)
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
                          "subtitles": subtitles, "judge_model": judge_model if judge else None}
    print(scoring.render_table(result))
    if out is not None:
        scoring.write_results(out, result)
        print(f"wrote {out}")


@app.command(name="eval")
def evaluate(
    model: str = typer.Option(..., "--model", help="A stormvl checkpoint folder."),
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
    device: str = typer.Option("auto", "--device", help="cpu | cuda[:i] | auto."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Run a trained model over a benchmark; resumable, with cost accounting."""
    import os

    from stormvl.distributed import end_process_group
    from stormvl.evaluation import EvalSettings, Runner, load_model, run_eval
    from stormvl.tasks import load_benchmark
    from stormvl.tasks.score import render_table

    world, barrier, rank = int(os.environ.get("WORLD_SIZE", "1")), None, 0
    if world > 1:  # accelerate launch / torchrun: data parallel, one process per device
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        rank, barrier = state.process_index, state.wait_for_everyone
    items = load_benchmark(benchmark, data, subtitles=subtitles, check_media=False)
    settings = EvalSettings(num_frames=frames, fps=fps, k=k, limit=limit, batch_size=batch_size,
                            max_new_tokens=max_new_tokens, subtitles=subtitles)
    runner = Runner(load_model(model, device), settings)
    for w in runner.warnings:
        print(f"warning: {w}", file=sys.stderr)
    result = run_eval(runner, benchmark, items, out, data, rank, world, barrier,
                      progress and rank == 0)
    end_process_group()
    if result is not None:
        print(render_table(result))
        if result["failed"]:
            print(f"{result['failed']} videos failed to load, counted as missing "
                  f"(see {out / 'failed.jsonl'}):")
            for f in result["failed_items"][:5]:
                print(f"  {f['id']}: {f['error']}")
        print(f"wrote {out / 'results.json'}, {out / 'results.md'}")


@app.command()
def answer(
    model: str = typer.Option(..., "--model", help="A stormvl checkpoint folder."),
    video: Path = typer.Option(..., "--video", help="The video file."),
    question: str = typer.Option(..., "--question", help="The question."),
    option: list[str] = typer.Option(None, "--option", help="An answer option (repeat)."),
    k: int | None = typer.Option(None, "--k", help="Latent steps (latent/storm checkpoints)."),
    frames: int | None = typer.Option(None, "--frames", help="Uniform frames (default: checkpoint's)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Reply budget."),
    device: str = typer.Option("auto", "--device", help="cpu | cuda[:i] | auto."),
) -> None:
    """Answer one question about one video, with latency."""
    from stormvl.evaluation import EvalSettings, Runner, answer_question, load_model

    if not video.is_file():  # before loading a model: a typo should fail fast
        raise UserError(f"--video {video}: file not found")
    settings = EvalSettings(num_frames=frames, k=k, max_new_tokens=max_new_tokens)
    runner = Runner(load_model(model, device), settings)
    row = answer_question(runner, video, question, option or [])
    lat = row["latency_s"]
    print(row["response"])
    print(f"latency: prefill {lat['prefill'] * 1000:.1f} ms, latent rollout "
          f"{lat['rollout'] * 1000:.1f} ms, decode {lat['decode'] * 1000:.1f} ms "
          f"({row['generated_tokens']} tokens, K = {row['latent_steps']}); "
          f"video load {row['load_s'] * 1000:.1f} ms", file=sys.stderr)


@app.command()
def demo(
    preset: str = typer.Option("quick", help="quick (smoke run, minutes) | full (shell game, 5 seeds: the evidence, hours) | test"),
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
    from stormvl.demo.pipeline import run_demo
    from stormvl.demo.presets import PRESETS
    from stormvl.report.demo_report import headline

    if preset not in PRESETS:
        raise UserError(f"--preset {preset!r}: choose from {', '.join(PRESETS)}")
    if seeds is not None and seeds < 1:
        raise UserError("--seeds must be >= 1")
    if parallel is not None and parallel < 1:
        raise UserError("--parallel must be >= 1")
    chosen = PRESETS[preset].with_seeds(seeds).with_methods(methods)
    chosen = chosen if parallel is None else dataclasses.replace(chosen, parallel=parallel)
    chosen = chosen if bottleneck is None else dataclasses.replace(chosen, bottleneck=bottleneck)
    results = run_demo(chosen, out, log=lambda m: print(m, flush=True))
    print(headline(results))
    print(f"report: {out / 'report.md'}  page: {out / 'index.html'}")


@app.command()
def report(folder: Path = typer.Argument(..., help="a demo output folder with results.json")) -> None:
    """Rebuild report.md / index.html / plots from a results folder."""
    from stormvl.report.demo_report import headline, write_report

    path = folder / "results.json"
    if not path.is_file():
        raise UserError(f"{path}: not found (run `stormvl demo --out {folder}` first)")
    results = read_json(path)
    write_report(results, folder)
    print(headline(results))


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    quiet_libraries()
    try:
        rc = app(args=argv, standalone_mode=False)  # Ctrl-C comes back as 130, not raised
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
        # Usage errors from the (vendored) click layer carry show() and exit_code.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
