"""TempCompass (HF ``lmms-lab/TempCompass``), read from a local copy.

Layout (``DIR`` = the dataset repo, ``tempcompass_videos.zip`` unzipped in place)::

    DIR/multi-choice/test-*.parquet
    DIR/yes_no/test-*.parquet
    DIR/caption_matching/test-*.parquet
    DIR/captioning/test-*.parquet        (scored only with an LLM judge)
    DIR/videos/{video_id}.mp4

Ids are ``<config>/<row index in that config>``. Prompts are lmms-eval 0.7.3's defaults:
the question (options already inside it) plus a per-format instruction.
"""

from __future__ import annotations

import re
from pathlib import Path

from stormvl.data.manifest import resolve_media
from stormvl.tasks.base import (
    EvalItem,
    PromptConfig,
    read_parquet_rows,
    require_fields,
    require_video,
)

NAME = "tempcompass"
BREAKDOWNS = ("dim", "config")
# config -> (reply format, default post prompt)
CONFIGS = {
    "multi-choice": ("mc", "\nPlease directly give the best option:"),
    "yes_no": ("yes_no", "\nPlease answer yes or no:"),
    "caption_matching": ("caption_matching", "\nPlease directly give the best option:"),
    "captioning": ("captioning", ""),
}
_OPTION = re.compile(r"^[A-D]\.\s*(.*)$")


def load(data: Path, prompt: PromptConfig | None = None, check_media: bool = True
         ) -> list[EvalItem]:
    """Read all four TempCompass configs."""
    prompt = prompt or PromptConfig()
    data = Path(data)
    items = []
    for config, (fmt, default_post) in CONFIGS.items():
        rows, where = read_parquet_rows(data / config, f"TempCompass {config}")
        fields = ["video_id", "question", "answer", "dim"]
        if fmt == "captioning":
            fields += ["mc_question", "mc_answer"]
        post = default_post if prompt.post_prompt is None else prompt.post_prompt
        for i, row in enumerate(rows):
            loc = f"{where}: row {i}"
            require_fields(row, fields, loc)
            video = resolve_media(data, f"videos/{row['video_id']}.mp4", loc)
            if check_media:
                require_video(video, f"{loc} (video_id {row['video_id']!r})")
            question = str(row["question"])
            meta = {k: str(row[k]) for k in ("mc_question", "mc_answer") if k in fields}
            items.append(EvalItem(
                id=f"{config}/{i}",
                benchmark=NAME,
                video=video,
                prompt=f"{prompt.pre_prompt or ''}{question}{post}",
                answer=str(row["answer"]),
                format=fmt,
                question=question,
                options=_options(question) if fmt == "mc" else [],
                categories={"dim": str(row["dim"]), "config": config},
                meta=meta,
            ))
    return items


def _options(question: str) -> list[str]:
    found = [_OPTION.match(line.strip()) for line in question.split("\n")[1:]]
    return [m.group(1) for m in found if m]
