"""Evaluation benchmarks: one reader per dataset, shared answer rules and scoring.

``load_benchmark(name, data_dir)`` gives the uniform ``EvalItem`` list for any benchmark;
``stormvl.tasks.score`` turns raw replies into the numbers the standard harness reports.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from stormvl.errors import UserError
from stormvl.tasks.base import EvalItem, PromptConfig, load_clip

BENCHMARKS = ("videomme", "mvbench", "tempcompass", "mmvu", "synth")

__all__ = ["BENCHMARKS", "EvalItem", "PromptConfig", "breakdowns", "load_benchmark",
           "load_clip"]


def _module(name: str):
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return import_module(f"stormvl.tasks.{name}")


def load_benchmark(
    name: str,
    data: str | Path,
    prompt: PromptConfig | None = None,
    subtitles: bool = False,
    check_media: bool = True,
) -> list[EvalItem]:
    """Read a benchmark's local copy into ``EvalItem``s.

    Args:
        name: one of ``BENCHMARKS``.
        data: the dataset folder (layouts in docs/benchmarks.md).
        prompt: pre / post prompt overrides (lmms-eval's defaults otherwise).
        subtitles: VideoMME only: build prompts with the subtitles of the sampled frames.
        check_media: also require every video to exist (scoring does not need them).

    Raises:
        UserError: unknown benchmark, or a missing file / field (named in the message).
    """
    mod = _module(name)
    data = Path(data)
    if not data.is_dir():
        raise UserError(f"{data}: benchmark data folder not found")
    if subtitles and name != "videomme":
        raise UserError("--subtitles applies to videomme only")
    kwargs = {"subtitles": subtitles} if name == "videomme" else {}
    return mod.load(data, prompt=prompt, check_media=check_media, **kwargs)


def breakdowns(name: str) -> tuple[str, ...]:
    """The category keys a benchmark is broken down by, in report order."""
    return _module(name).BREAKDOWNS
