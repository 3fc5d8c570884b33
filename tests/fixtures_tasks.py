"""Writers for tiny benchmark copies in each dataset's official on-disk layout.

Nothing binary is committed: the tests call these into tmp_path. One tiny video is encoded
once per call and copied to every path a layout needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stormvl.data.manifest import Sample, write_manifest
from stormvl.data.video import write_video

FPS = 4.0
N_FRAMES = 40  # 10 s at 4 fps


def tiny_video(path: Path, n: int = N_FRAMES, fps: float = FPS, first: int = 0) -> Path:
    """A 16x16 clip whose frame k is filled with grey level 6 (first + k) (frame-identifiable;
    ``first`` > 0: the part of the source clip that starts at that frame)."""
    frames = np.zeros((n, 16, 16, 3), np.uint8)
    frames[:] = ((first + np.arange(n)) * 6 % 256).astype(np.uint8)[:, None, None, None]
    write_video(path, frames, fps=fps, lossless=True)
    return path


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        shutil.copyfile(src, dst)


def _parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


# ----------------------------------------------------------------------------------------
# VideoMME: videomme/test-*.parquet, data/{videoID}.mp4, subtitle/{videoID}.srt

VIDEOMME_ROWS = [
    # question_id, videoID, duration, domain, task_type, answer
    ("001-1", "vidA", "short", "Knowledge", "Counting Problem", "A"),
    ("001-2", "vidA", "short", "Knowledge", "OCR Problems", "B"),
    ("001-3", "vidA", "short", "Knowledge", "Counting Problem", "C"),
    ("002-1", "vidB", "medium", "Sports Competition", "Action Reasoning", "D"),
    ("002-2", "vidB", "medium", "Sports Competition", "Counting Problem", "A"),
    ("003-1", "vidC", "long", "Life Record", "Temporal Reasoning", "B"),
]

SRT = """1
00:00:00,000 --> 00:00:02,000
<font color="white" size=".72c">hello there</font>

2
00:00:02,000 --> 00:00:04,500
<font color="white" size=".72c">second line</font>

3
00:00:08,000 --> 00:00:09,000
plain line without tags
"""


def write_videomme(root: Path, videos: bool = True) -> Path:
    rows = []
    for qid, vid, dur, dom, task, ans in VIDEOMME_ROWS:
        rows.append({
            "video_id": qid.split("-")[0], "duration": dur, "domain": dom,
            "sub_category": "Sub " + dom, "url": "https://example.invalid/" + vid,
            "videoID": vid, "question_id": qid, "task_type": task,
            "question": f"Question {qid}?",
            "options": ["A. red", "B. green", "C. blue", "D. yellow"], "answer": ans,
        })
    _parquet(root / "videomme" / "test-00000-of-00001.parquet", rows)
    if videos:
        src = tiny_video(root / "data" / "vidA.mp4")
        for vid in ("vidB", "vidC"):
            _place(src, root / "data" / f"{vid}.mp4")
    (root / "subtitle").mkdir(parents=True, exist_ok=True)
    (root / "subtitle" / "vidA.srt").write_text(SRT, encoding="utf-8")
    return root


# ----------------------------------------------------------------------------------------
# MVBench: json/{task}.json (20 files) and, by branch of the dataset repo,
#   main:  video/{folder}/{video}   whole videos, start / end bounds, tvqa frame folders at 3 fps
#   video: {folder}/{video}         lmms-eval's revision: pre-cut *_segment clips, all mp4

MVB_BOUNDS = (2.0, 6.0)  # seconds into the 10 s source video (frames 8..24 at 4 fps)


def write_mvbench(root: Path, videos: bool = True, layout: str = "main",
                  tasks: list[str] | None = None) -> Path:
    """Two rows per task (answers "left", "right"). On the ``video`` branch a bounded task's
    row names its pre-cut clip ``{stem}_{start}_{end}.mp4`` (frames 8..23 of the source) and
    keeps its bounds, which must then not be applied again."""
    from stormvl.tasks.mvbench import TASKS

    src = tiny_video(root / ".src.mp4") if videos else None
    cut = tiny_video(root / ".cut.mp4", n=16, first=8) if videos else None
    for task in tasks or TASKS:
        spec = TASKS[task]
        rows = []
        for i in range(2):
            name, media = f"{task}_{i}.mp4", src
            if layout == "main" and spec.frames:
                name = f"{task}_{i}"
            elif layout == "video" and spec.bounded:
                name, media = f"{task}_{i}_{MVB_BOUNDS[0]}_{MVB_BOUNDS[1]}.mp4", cut
            row = {"video": name, "question": f"What happens in {task} {i}?",
                   "candidates": ["left", "right", "up"], "answer": ["left", "right"][i]}
            if spec.bounded:
                row.update(start=MVB_BOUNDS[0], end=MVB_BOUNDS[1])
            rows.append(row)
            if not videos:
                continue
            dest = root / ("video/" + spec.main if layout == "main" else spec.video) / name
            if layout == "main" and spec.frames:
                _frame_folder(dest, 12)
            else:
                _place(media, dest)
        path = root / "json" / f"{task}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows))
    for f in (src, cut):
        if f is not None:
            f.unlink()
    return root


def _frame_folder(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(np.full((16, 16, 3), 10 * k, np.uint8)).save(folder / f"{k + 1:05d}.jpg")


# ----------------------------------------------------------------------------------------
# TempCompass: {config}/test-*.parquet, videos/{video_id}.mp4

TC_MC_Q = "What is the cat doing?\nA. jumping\nB. sleeping\nC. eating\nD. running"
TC_CM_Q = ("Which caption matches the video?\nSentence A: the car moves left\n"
           "Sentence B: the car moves right")


def write_tempcompass(root: Path, videos: bool = True) -> Path:
    mc = [
        {"video_id": "v1", "question": TC_MC_Q, "answer": "B. sleeping", "dim": "action"},
        {"video_id": "v1", "question": TC_MC_Q, "answer": "A. jumping", "dim": "speed"},
        {"video_id": "v2", "question": TC_MC_Q, "answer": "C. eating", "dim": "direction"},
    ]
    yn = [
        {"video_id": "v1", "question": "Is the cat sleeping?", "answer": "yes", "dim": "action"},
        {"video_id": "v2", "question": "Is the car fast?", "answer": "no", "dim": "speed"},
    ]
    cm = [
        {"video_id": "v2", "question": TC_CM_Q, "answer": "Sentence B: the car moves right",
         "dim": "direction"},
        {"video_id": "v1", "question": TC_CM_Q, "answer": "Sentence A: the car moves left",
         "dim": "order"},
    ]
    cap = [
        {"video_id": "v1", "question": "Describe the video.", "answer": "a sleeping cat",
         "dim": "action", "mc_question": TC_MC_Q, "mc_answer": "B. sleeping"},
    ]
    for config, rows in (("multi-choice", mc), ("yes_no", yn), ("caption_matching", cm),
                         ("captioning", cap)):
        _parquet(root / config / "test-00000-of-00001.parquet", rows)
    if videos:
        src = tiny_video(root / "videos" / "v1.mp4")
        _place(src, root / "videos" / "v2.mp4")
    return root


# ----------------------------------------------------------------------------------------
# MMVU: validation.json, videos/{Subject}/{n}.mp4

def write_mmvu(root: Path, videos: bool = True) -> Path:
    empty = {k: "" for k in "ABCDE"}
    choices = {"A": "Isothermal compression", "B": "Adiabatic compression",
               "C": "Isobaric compression", "D": "Adiabatic expansion", "E": "Free expansion"}
    rows = [
        {"id": "validation_0", "video": "https://huggingface.co/datasets/yale-nlp/MMVU/"
         "resolve/main/videos/Art/0.mp4", "question_type": "open-ended",
         "metadata": {"subject": "Art"}, "question": "Which technique is shown?",
         "choices": empty, "answer": "Dolly Zoom"},
        {"id": "validation_1", "video_path": "videos/Thermodynamics/0.mp4",
         "question_type": "multiple-choice", "question": "Which process is shown?",
         "choices": choices, "answer": "B"},
        {"id": "validation_2", "video_path": "videos/Biology/0.mp4",
         "question_type": "multiple-choice", "question": "Which organ is shown?",
         "choices": {"A": "Heart", "B": "Lung", "C": "Liver", "D": "Kidney", "E": "Brain"},
         "answer": "C"},
        {"id": "validation_3", "video_path": "videos/Law/0.mp4",
         "question_type": "multiple-choice", "question": "Which court is it?",
         "choices": {"A": "Supreme", "B": "District", "C": "Appeals", "D": "Family",
                     "E": "Traffic"}, "answer": "D"},
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "validation.json").write_text(json.dumps(rows, indent=1))
    if videos:
        src = tiny_video(root / "videos" / "Art" / "0.mp4")
        for sub in ("Thermodynamics", "Biology", "Law"):
            _place(src, root / "videos" / sub / "0.mp4")
    return root


# ----------------------------------------------------------------------------------------
# synth: manifest.jsonl + videos/ (the built-in suite's layout)

def write_synth(root: Path, videos: bool = True) -> Path:
    specs = [  # id, family, split, difficulty, answer
        ("s0", "shell_game", "test", "easy", "A"),
        ("s1", "shell_game", "test", "hard", "B"),
        ("s2", "event_order", "test", "easy", "C"),
        ("s3", "event_order", "ood", "hard", "D"),
    ]
    samples = [Sample(id=i, video=f"videos/{i}.mp4", question=f"Where is the ball ({i})?",
                      options=["cup 1", "cup 2", "cup 3", "cup 4"], answer=a, family=f,
                      split=s, difficulty=d,
                      meta={"synth": {"params": {"swaps": int(d == "hard") * 2 + 1}}}
                      if f == "shell_game" else None)
               for i, f, s, d, a in specs]
    write_manifest(root / "manifest.jsonl", samples)
    if videos:
        src = tiny_video(root / "videos" / "s0.mp4")
        for i in ("s1", "s2", "s3"):
            _place(src, root / "videos" / f"{i}.mp4")
    return root


def write_predictions(path: Path, rows: list[tuple]) -> Path:
    """Each row is (id, response) -> one JSONL line."""
    path.write_text("".join(json.dumps({"id": i, "response": r}) + "\n" for i, r in rows))
    return path
