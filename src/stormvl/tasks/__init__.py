"""Evaluation benchmarks: one reader per dataset, shared answer rules and scoring.

``load_benchmark(name, data_dir)`` gives the uniform ``EvalItem`` list for any benchmark;
``stormvl.tasks.score`` turns raw replies into the numbers the standard harness reports.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    tasks: Sequence[str] | None = None,
) -> list[EvalItem]:
    """Read a benchmark's local copy into ``EvalItem``s.

    Args:
        name: one of ``BENCHMARKS``.
        data: the dataset folder (layouts in docs/benchmarks.md).
        prompt: pre / post prompt overrides (lmms-eval's defaults otherwise).
        subtitles: VideoMME only: build prompts with the subtitles of the sampled frames.
        check_media: also require every video to exist (scoring does not need them).
        tasks: MVBench only: read just these of its 20 tasks (a partial copy is enough).

    Raises:
        UserError: unknown benchmark, a missing file / field (named in the message), or a
            copy that holds no questions.
    """
    mod = _module(name)
    data = Path(data)
    if not data.is_dir():
        raise UserError(f"{data}: benchmark data folder not found")
    if subtitles and name != "videomme":
        raise UserError("--subtitles applies to videomme only")
    if tasks and name != "mvbench":
        raise UserError("--tasks applies to mvbench only")
    kwargs = {"subtitles": subtitles} if name == "videomme" else {}
    if tasks:
        kwargs["tasks"] = list(tasks)
    items = mod.load(data, prompt=prompt, check_media=check_media, **kwargs)
    if not items:  # e.g. an empty manifest: nothing could be scored, so nothing to report
        raise UserError(f"{data}: the {name} copy holds no questions")
    return items


def breakdowns(name: str) -> tuple[str, ...]:
    """The category keys a benchmark is broken down by, in report order."""
    return _module(name).BREAKDOWNS
