"""MVBench (HF ``OpenGVLab/MVBench``), read from a local copy.

Layout (``DIR`` = the dataset repo's main branch, ``video/*.zip`` unzipped in place)::

    DIR/json/{task}.json                  20 task files, 200 rows each
    DIR/video/{folder}/{row.video}        e.g. video/clevrer/video_validation/video_10009.mp4
    DIR/video/data0613/{folder}/...       later-added files (checked second, as upstream)

The per-task folder, media type and whether rows carry ``start`` / ``end`` bounds follow the
official MVBench data list (Ask-Anything ``mvbench.ipynb``). Episodic reasoning's media is a
folder of frames taken at 3 fps. Ids are ``<task>/<row index in that task's JSON>``.
Prompt: lmms-eval 0.7.3's ``mvbench`` default.
"""

from __future__ import annotations

from pathlib import Path

from stormvl.data.manifest import LETTERS, resolve_media
from stormvl.errors import UserError
from stormvl.io import read_json
from stormvl.tasks.base import EvalItem, PromptConfig, require_fields

NAME = "mvbench"
BREAKDOWNS = ("task",)
POST_PROMPT = "Only give the best option.\n"

# task -> (media folder under video/, frame folder?, rows carry start/end bounds?)
TASKS: dict[str, tuple[str, bool, bool]] = {
    "action_sequence": ("star/Charades_v1_480", False, True),
    "action_prediction": ("star/Charades_v1_480", False, True),
    "action_antonym": ("ssv2_video", False, False),
    "fine_grained_action": ("Moments_in_Time_Raw/videos", False, False),
    "unexpected_action": ("FunQA_test/test", False, False),
    "object_existence": ("clevrer/video_validation", False, False),
    "object_interaction": ("star/Charades_v1_480", False, True),
    "object_shuffle": ("perception/videos", False, False),
    "moving_direction": ("clevrer/video_validation", False, False),
    "action_localization": ("sta/sta_video", False, True),
    "scene_transition": ("scene_qa/video", False, False),
    "action_count": ("perception/videos", False, False),
    "moving_count": ("clevrer/video_validation", False, False),
    "moving_attribute": ("clevrer/video_validation", False, False),
    "state_change": ("perception/videos", False, False),
    "fine_grained_pose": ("nturgbd", False, False),
    "character_order": ("perception/videos", False, False),
    "egocentric_navigation": ("vlnqa", False, False),
    "episodic_reasoning": ("tvqa/frames_fps3_hq", True, True),
    "counterfactual_inference": ("clevrer/video_validation", False, False),
}
FRAME_FPS = 3.0  # tvqa frames_fps3_hq


def load(data: Path, prompt: PromptConfig | None = None, check_media: bool = True,
         tasks: list[str] | None = None) -> list[EvalItem]:
    """Read the MVBench task files (all 20 unless ``tasks`` names a subset)."""
    prompt = prompt or PromptConfig()
    data = Path(data)
    names = tasks or list(TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise UserError(f"unknown MVBench task(s) {unknown}; known: {', '.join(TASKS)}")
    items = []
    for task in names:
        folder, is_frames, bounded = TASKS[task]
        path = data / "json" / f"{task}.json"
        rows = read_json(path, "annotation file")
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of question rows")
        for i, row in enumerate(rows):
            where = f"{path}: row {i}"
            require_fields(row, ("video", "question", "candidates", "answer"), where)
            cands = [str(c) for c in row["candidates"]]
            if str(row["answer"]) not in cands:
                raise UserError(f"{where}: field 'answer' {row['answer']!r} is not among "
                                f"'candidates'")
            if not 2 <= len(cands) <= len(LETTERS):
                raise UserError(f"{where}: field 'candidates' has {len(cands)} entries")
            media = _media_path(data, folder, str(row["video"]), where, check_media)
            start = end = None
            if bounded and row.get("start") is not None and row.get("end") is not None:
                start, end = float(row["start"]), float(row["end"])
            items.append(EvalItem(
                id=f"{task}/{i}",
                benchmark=NAME,
                video=media,
                prompt=build_prompt(str(row["question"]), cands, prompt),
                answer=LETTERS[cands.index(str(row["answer"]))],
                question=str(row["question"]),
                options=cands,
                categories={"task": task},
                start=start,
                end=end,
                frames_fps=FRAME_FPS if is_frames else None,
            ))
    return items


def build_prompt(question: str, candidates: list[str], prompt: PromptConfig) -> str:
    options = "".join(f"({LETTERS[k]}) {c}\n" for k, c in enumerate(candidates))
    post = POST_PROMPT if prompt.post_prompt is None else prompt.post_prompt
    return f"{prompt.pre_prompt or ''}Question:{question}\nOption:\n{options}{post}"


def _media_path(data: Path, folder: str, name: str, where: str, check: bool) -> Path:
    tried = [resolve_media(data, f"video/{sub}{folder}/{name}", where)
             for sub in ("", "data0613/")]
    for p in tried:
        if p.exists():
            return p
    if check:
        raise UserError(f"{where}: media {name!r} not found (looked in {tried[0]} and {tried[1]})")
    return tried[0]
