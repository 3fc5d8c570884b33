"""MVBench (HF ``OpenGVLab/MVBench``), read from a local copy of either branch of its repo.

Main branch (``DIR/video/*.zip`` unzipped in place; Ask-Anything ``mvbench.ipynb`` folders)::

    DIR/json/{task}.json                  20 task files, 200 rows each
    DIR/video/{folder}/{row.video}        e.g. video/star/Charades_v1_480/6H78U.mp4
    DIR/video/data0613/{folder}/...       later-added files (checked second, as upstream)

Rows of the bounded tasks carry ``start`` / ``end`` seconds into a whole video; episodic
reasoning's media is a folder of frames taken at 3 fps.

``video`` branch (what lmms-eval 0.7.3 downloads: ``revision: video``)::

    DIR/json/{task}.json
    DIR/{folder}/{row.video}              e.g. star/Charades_segment/6H78U_4.6_10.3.mp4

Its folders (lmms-eval's ``DATA_LIST``) hold pre-cut clips for the bounded tasks
(``*_segment``) and mp4 files everywhere, so no bounds are applied, as lmms-eval applies
none. A row naming the whole video (the main branch's annotations) finds its clip by the
``{stem}_{start}_{end}`` file name. Ids are ``<task>/<row index in that task's JSON>``.
Prompt: lmms-eval 0.7.3's ``mvbench`` default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from stormvl.data.manifest import LETTERS, resolve_media
from stormvl.errors import UserError
from stormvl.io import read_json
from stormvl.tasks.base import EvalItem, PromptConfig, require_fields

NAME = "mvbench"
BREAKDOWNS = ("task",)
POST_PROMPT = "Only give the best option.\n"
FRAME_FPS = 3.0  # main branch tvqa/frames_fps3_hq
LAYOUTS = ("main", "video")  # the dataset repo's branches


@dataclass(frozen=True)
class Task:
    """Where one task's media lives on each branch of the dataset repo."""

    main: str  # folder under DIR/video/ on the main branch
    video: str  # folder at DIR/ on the `video` branch (pre-cut clips for bounded tasks)
    bounded: bool = False  # main branch: rows carry start / end seconds into a whole video
    frames: bool = False  # main branch: each row names a folder of 3 fps frames


_CLEVRER = "clevrer/video_validation"
_PERCEPTION = "perception/videos"
_STAR = ("star/Charades_v1_480", "star/Charades_segment")

TASKS: dict[str, Task] = {
    "action_sequence": Task(*_STAR, bounded=True),
    "action_prediction": Task(*_STAR, bounded=True),
    "action_antonym": Task("ssv2_video", "ssv2_video_mp4"),
    "fine_grained_action": Task("Moments_in_Time_Raw/videos", "Moments_in_Time_Raw/videos"),
    "unexpected_action": Task("FunQA_test/test", "FunQA_test/test"),
    "object_existence": Task(_CLEVRER, _CLEVRER),
    "object_interaction": Task(*_STAR, bounded=True),
    "object_shuffle": Task(_PERCEPTION, _PERCEPTION),
    "moving_direction": Task(_CLEVRER, _CLEVRER),
    "action_localization": Task("sta/sta_video", "sta/sta_video_segment", bounded=True),
    "scene_transition": Task("scene_qa/video", "scene_qa/video"),
    "action_count": Task(_PERCEPTION, _PERCEPTION),
    "moving_count": Task(_CLEVRER, _CLEVRER),
    "moving_attribute": Task(_CLEVRER, _CLEVRER),
    "state_change": Task(_PERCEPTION, _PERCEPTION),
    "fine_grained_pose": Task("nturgbd", "nturgbd_convert"),
    "character_order": Task(_PERCEPTION, _PERCEPTION),
    "egocentric_navigation": Task("vlnqa", "vlnqa"),
    "episodic_reasoning": Task("tvqa/frames_fps3_hq", "tvqa/video_fps3_hq_segment",
                               bounded=True, frames=True),
    "counterfactual_inference": Task(_CLEVRER, _CLEVRER),
}


def detect_layout(data: Path) -> str:
    """Which branch ``data`` is a copy of: ``main`` when it has ``video/``, ``video`` when a
    task folder sits at its root; an annotations-only copy reads as ``main`` (scoring needs
    no media)."""
    data = Path(data)
    if (data / "video").is_dir():
        return "main"
    if any((data / t.video.split("/")[0]).is_dir() for t in TASKS.values()):
        return "video"
    return "main"


def load(data: Path, prompt: PromptConfig | None = None, check_media: bool = True,
         tasks: Sequence[str] | None = None) -> list[EvalItem]:
    """Read the MVBench task files (all 20 unless ``tasks`` names a subset).

    With ``tasks``, only those tasks' files (and media) need to be there: a partial copy.

    Raises:
        UserError: an unknown task, a missing task file, a bad row, missing media (with
            ``check_media``); the message names the file and row.
    """
    prompt = prompt or PromptConfig()
    data = Path(data)
    names = list(dict.fromkeys(tasks)) if tasks else list(TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise UserError(f"unknown MVBench task(s) {unknown}; known: {', '.join(TASKS)}")
    layout = detect_layout(data)
    _segment_index.cache_clear()  # a listing per folder and load: files may have changed
    items = []
    for task in names:
        path = data / "json" / f"{task}.json"
        if not tasks and not path.is_file():
            raise UserError(f"{path}: annotation file not found (to evaluate part of MVBench, "
                            "name the tasks there with --tasks)")
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
            video, bounds, fps = _media(data, layout, TASKS[task], row, where, check_media)
            items.append(EvalItem(
                id=f"{task}/{i}",
                benchmark=NAME,
                video=video,
                prompt=build_prompt(str(row["question"]), cands, prompt),
                answer=LETTERS[cands.index(str(row["answer"]))],
                question=str(row["question"]),
                options=cands,
                categories={"task": task},
                start=bounds[0] if bounds else None,
                end=bounds[1] if bounds else None,
                frames_fps=fps,
            ))
    return items


def build_prompt(question: str, candidates: list[str], prompt: PromptConfig) -> str:
    options = "".join(f"({LETTERS[k]}) {c}\n" for k, c in enumerate(candidates))
    post = POST_PROMPT if prompt.post_prompt is None else prompt.post_prompt
    return f"{prompt.pre_prompt or ''}Question:{question}\nOption:\n{options}{post}"


def _bounds(spec: Task, row: dict, where: str) -> tuple[float, float] | None:
    if not spec.bounded or row.get("start") is None or row.get("end") is None:
        return None
    try:
        return float(row["start"]), float(row["end"])
    except (TypeError, ValueError):
        raise UserError(f"{where}: fields 'start' / 'end' must be numbers") from None


def _media(data: Path, layout: str, spec: Task, row: dict, where: str, check: bool
           ) -> tuple[Path, tuple[float, float] | None, float | None]:
    """(media path, start / end bounds to apply, frame-folder fps) for the copy's branch."""
    name, bounds = str(row["video"]), _bounds(spec, row, where)
    folder = f"video/{spec.main}" if layout == "main" else spec.video
    tried = [resolve_media(data, f"{sub}{folder}/{name}", where) for sub in ("", "data0613/")]
    found = next((p for p in tried if p.exists()), None)
    if layout == "video":  # pre-cut clips: nothing to bound; a whole video's name finds its clip
        if found is None and bounds is not None:
            found = _segment(tried[0].parent, name, bounds)
        bounds = None
    if found is None and check:
        raise UserError(f"{where}: media {name!r} not found (looked in {tried[0]} and "
                        f"{tried[1]}; {layout} branch layout)")
    fps = FRAME_FPS if layout == "main" and spec.frames else None
    return found or tried[0], bounds, fps


def _segment(folder: Path, name: str, bounds: tuple[float, float]) -> Path | None:
    """The pre-cut clip ``{stem}_{start}_{end}.mp4`` of ``name`` whose bounds are within
    10 ms of the row's (clip names print the bounds as Python floats: 1.2999999999999998)."""
    stem = name.rsplit(".", 1)[0] if name.lower().endswith((".mp4", ".webm", ".avi", ".mkv")) \
        else name
    best = None
    for a, b, path in _segment_index(folder).get(stem, []):
        err = max(abs(a - bounds[0]), abs(b - bounds[1]))
        if err <= 0.01 and (best is None or err < best[0]):
            best = (err, path)
    return best[1] if best else None


@cache
def _segment_index(folder: Path) -> dict[str, list[tuple[float, float, Path]]]:
    """stem -> (start, end, file) of every ``{stem}_{start}_{end}.ext`` in ``folder``."""
    index: dict[str, list[tuple[float, float, Path]]] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        parts = path.stem.rsplit("_", 2)
        try:
            a, b = float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            continue
        index.setdefault(parts[0], []).append((a, b, path))
    return index
