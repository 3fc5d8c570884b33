"""The ``stormvl`` command line: one thin function per subcommand.

Each command parses flags, calls library code, and prints. A ``UserError`` anywhere below
becomes ``error: <message>`` on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from stormvl.errors import UserError

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
) -> None:
    """Generate the procedural suite: videos, thought videos and a manifest."""
    from stormvl.synth import build_suite

    path = build_suite(
        out, n, families, split, difficulty, frames, size, seed, workers, overwrite, progress=True
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


@app.command()
def thoughts() -> None:
    """Make thought videos for a manifest with a generator (sharded, resumable)."""
    _not_ready("thoughts", 7)


@app.command()
def train() -> None:
    """Train a method (direct, textcot, latent, storm stage 1/2, oracle) from a YAML config."""
    _not_ready("train", 4)


@app.command()
def export() -> None:
    """Merge LoRA adapters into a full Hugging Face checkpoint."""
    _not_ready("export", 4)


@app.command()
def score() -> None:
    """Score raw model replies on a benchmark as the standard harness does."""
    _not_ready("score", 5)


@app.command(name="eval")
def evaluate() -> None:
    """Run a trained model over a benchmark; resumable, with cost accounting."""
    _not_ready("eval", 5)


@app.command()
def answer() -> None:
    """Answer one question about one video, with latency."""
    _not_ready("answer", 5)


@app.command()
def demo() -> None:
    """The whole method end to end on the built-in suite, with a report."""
    _not_ready("demo", 6)


@app.command()
def report() -> None:
    """Rebuild report.md / index.html / plots from a results folder."""
    _not_ready("report", 6)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    try:
        app(args=argv, standalone_mode=False)
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
