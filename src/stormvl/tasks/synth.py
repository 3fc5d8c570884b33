"""The built-in procedural suite as a benchmark: its manifest, broken down by family,
difficulty and split (the ``ood`` split uses parameter ranges training never saw).

Layout: ``DIR/manifest.jsonl`` (schema in docs/manifest.md) with media paths relative to DIR.
The prompt lists lettered options in the common "A. text" form with lmms-eval's usual
letter instruction; replies are read with the same priority rule as VideoMME. A row without
options (an open-ended question, manifest schema 2) is prompted with the question alone, as
training prompts it, and only a judge can score it.
"""

from __future__ import annotations

from pathlib import Path

from stormvl.data.manifest import LETTERS, read_manifest, resolve_media
from stormvl.synth.registry import chain_label
from stormvl.tasks.base import EvalItem, PromptConfig, require_video

NAME = "synth"
BREAKDOWNS = ("family", "difficulty", "chain", "split")
POST_PROMPT = "Answer with the option's letter from the given choices directly."


def load(data: Path, prompt: PromptConfig | None = None, check_media: bool = True
         ) -> list[EvalItem]:
    """Read a suite manifest (any split mix) into items."""
    prompt = prompt or PromptConfig()
    data = Path(data)
    path = data / "manifest.jsonl"
    items = []
    for n, s in enumerate(read_manifest(path)):
        where = f"{path}: row {n} (id {s.id!r})"
        video = resolve_media(data, s.video, where)
        if check_media:
            require_video(video, where)
        meta = {"seed": s.seed} if s.seed is not None else {}
        if s.thought_video:  # the oracle method is shown it at evaluation too
            meta["thought_video"] = resolve_media(data, s.thought_video, where)
        items.append(EvalItem(
            id=s.id,
            benchmark=NAME,
            video=video,
            prompt=build_prompt(s.question, s.options, prompt),
            answer=s.answer,
            format="mc" if s.options else "open_ended",
            question=s.question,
            options=list(s.options),
            categories={"chain": chain_label(s),
                        **{k: getattr(s, k) or "-" for k in BREAKDOWNS if k != "chain"}},
            start=s.start,
            end=s.end,
            meta=meta,
        ))
    return items


def build_prompt(question: str, options: list[str], prompt: PromptConfig) -> str:
    if not options:  # open-ended: the question as training wrote it (format_question)
        post = f"\n{prompt.post_prompt}" if prompt.post_prompt else ""
        return f"{prompt.pre_prompt or ''}{question}{post}"
    lines = "\n".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(options))
    post = POST_PROMPT if prompt.post_prompt is None else prompt.post_prompt
    return f"{prompt.pre_prompt or ''}{question}\n{lines}\n{post}"
