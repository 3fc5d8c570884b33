"""VideoMME (HF ``lmms-lab/Video-MME``), read from a local copy.

Layout (``DIR`` = the downloaded dataset repo, archives unzipped in place)::

    DIR/videomme/test-*.parquet      question rows
    DIR/data/{videoID}.mp4           videos (.MP4 / .mkv also accepted, as lmms-eval does)
    DIR/subtitle/{videoID}.srt       subtitles (optional; only for --subtitles)

Prompts follow lmms-eval 0.7.3's ``videomme`` / ``videomme_w_subtitle`` defaults. With
subtitles, only the subtitle lines whose time span covers a sampled frame are shown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from stormvl.data.manifest import resolve_media
from stormvl.errors import UserError
from stormvl.tasks.base import (
    EvalItem,
    PromptConfig,
    read_parquet_rows,
    require_fields,
    require_video,
)

NAME = "videomme"
BREAKDOWNS = ("duration", "domain", "sub_category", "task_type")
_FIELDS = ("question_id", "videoID", "duration", "domain", "sub_category", "task_type",
           "question", "options", "answer")

INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video "
    "and the subtitles. Respond with only the letter (A, B, C, or D) of the correct option."
)
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
SUBTITLE_HEADER = "This video's subtitles are listed below: \n"
SUBTITLE_POST_PROMPT = "The best answer is:"
NO_SUBTITLES = "No subtitles available"


def load(data: Path, prompt: PromptConfig | None = None, subtitles: bool = False,
         check_media: bool = True) -> list[EvalItem]:
    """Read every VideoMME question; ``check_media`` also requires each video to exist."""
    prompt = prompt or PromptConfig()
    rows, where = read_parquet_rows(Path(data) / "videomme", "VideoMME")
    items = []
    for n, row in enumerate(rows):
        loc = f"{where}: row {n}"
        require_fields(row, _FIELDS, loc)
        options = [str(o) for o in row["options"]]
        video = _video_path(Path(data), str(row["videoID"]), loc)
        if check_media:
            require_video(video, f"{loc} (videoID {row['videoID']!r})")
        block = f"{row['question']}\n" + "\n".join(options)
        pre = prompt.pre_prompt or ""
        post = POST_PROMPT if prompt.post_prompt is None else prompt.post_prompt
        item = EvalItem(
            id=str(row["question_id"]),
            benchmark=NAME,
            video=video,
            prompt=f"{pre}{INSTRUCTION}\n{block}\n{post}",
            answer=str(row["answer"]).strip(),
            question=str(row["question"]),
            options=[re.sub(r"^[A-D]\.\s*", "", o) for o in options],
            categories={k: str(row[k]) for k in BREAKDOWNS},
        )
        if subtitles:
            srt = resolve_media(data, f"subtitle/{row['videoID']}.srt", loc)
            sub_post = SUBTITLE_POST_PROMPT if prompt.post_prompt is None else prompt.post_prompt
            tail = f"{pre}{INSTRUCTION}\n{block}\n{sub_post}"
            item.subtitles = partial(subtitle_lines, srt)
            item.subtitle_prompt = partial(_subtitle_prompt, srt, tail)
        items.append(item)
    return items


def _video_path(data: Path, video_id: str, where: str) -> Path:
    base = resolve_media(data, f"data/{video_id}.mp4", where)
    for cand in (base, base.with_suffix(".MP4"), base.with_suffix(".mkv")):
        if cand.exists():
            return cand
    return base


def subtitle_lines(srt: Path, timestamps: Sequence[float]) -> list[str]:
    """The subtitle lines shown with frames at ``timestamps`` ([] without an .srt file)."""
    return subtitles_at(parse_srt(srt), timestamps) if srt.is_file() else []


def _subtitle_prompt(srt: Path, tail: str, timestamps: Sequence[float]) -> str:
    text = "\n".join(subtitle_lines(srt, timestamps)) if srt.is_file() else NO_SUBTITLES
    return f"{SUBTITLE_HEADER}{text}\n{tail}"


# ----------------------------------------------------------------------------------------
# Subtitles

_TIME = re.compile(r"(\d+):(\d+):(\d+)[,.](\d+)")
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')
_TAG = re.compile(r"<[^>]+>")


def _seconds(stamp: str, where: str) -> float:
    m = _TIME.fullmatch(stamp.strip())
    if not m:
        raise UserError(f"{where}: bad subtitle time {stamp.strip()!r} (want HH:MM:SS,mmm)")
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms) / 10 ** len(ms)


def parse_srt(path: Path) -> list[tuple[float, float, str]]:
    """(start s, end s, text) per subtitle block, in file order.

    VideoMME's .srt text sits in ``<font color="white" size=".72c">`` tags; the tag's content
    is the line (as lmms-eval reads it); other markup is stripped.
    """
    raw = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    out = []
    for b, block in enumerate(re.split(r"\n\s*\n", raw)):
        lines = [ln for ln in block.strip("\n").split("\n")]
        if len(lines) < 3 or "-->" not in lines[1]:
            continue
        a, _, z = lines[1].partition("-->")
        where = f"{path}: block {b + 1}"
        body = " ".join(lines[2:])
        fonts = _FONT.findall(body)
        text = fonts[0] if fonts else _TAG.sub("", body).strip()
        if text:
            out.append((_seconds(a, where), _seconds(z, where), text))
    return out


def subtitles_at(lines: list[tuple[float, float, str]], timestamps: Sequence[float]) -> list[str]:
    """Subtitle texts whose [start, end) span holds at least one sampled frame time."""
    keep = [i for i, (a, z, _) in enumerate(lines) if any(a <= t < z for t in timestamps)]
    return [lines[i][2] for i in keep]
