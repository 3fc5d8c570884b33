"""MVBench reader: 20 task files, both branches' video folders (main: whole videos, bounds,
frame folders; ``video``: lmms-eval's pre-cut clips), task subsets, scoring."""

import json
import shutil

import numpy as np
import pytest

from fixtures_tasks import write_mvbench, write_predictions
from stormvl.cli import main
from stormvl.errors import UserError
from stormvl.tasks import breakdowns, load_benchmark, load_clip
from stormvl.tasks.mvbench import TASKS, detect_layout
from stormvl.tasks.score import read_predictions, score

# lmms-eval 0.7.3 lmms_eval/tasks/mvbench/utils.py DATA_LIST: each task's folder at the root
# of the dataset repo's `video` revision (its _default_template_yaml: revision: video).
LMMS_EVAL_FOLDERS = {
    "object_interaction": "star/Charades_segment", "action_sequence": "star/Charades_segment",
    "action_prediction": "star/Charades_segment", "action_localization": "sta/sta_video_segment",
    "moving_count": "clevrer/video_validation", "fine_grained_pose": "nturgbd_convert",
    "character_order": "perception/videos", "object_shuffle": "perception/videos",
    "egocentric_navigation": "vlnqa", "moving_direction": "clevrer/video_validation",
    "episodic_reasoning": "tvqa/video_fps3_hq_segment",
    "fine_grained_action": "Moments_in_Time_Raw/videos", "scene_transition": "scene_qa/video",
    "state_change": "perception/videos", "moving_attribute": "clevrer/video_validation",
    "action_antonym": "ssv2_video_mp4", "unexpected_action": "FunQA_test/test",
    "counterfactual_inference": "clevrer/video_validation",
    "object_existence": "clevrer/video_validation", "action_count": "perception/videos",
}


@pytest.fixture(scope="module")
def mvb(tmp_path_factory):
    return write_mvbench(tmp_path_factory.mktemp("mvbench"))


def test_items(mvb):
    items = load_benchmark("mvbench", mvb)
    assert len(items) == 40 and len(TASKS) == 20
    by_id = {it.id: it for it in items}
    it = by_id["action_sequence/1"]
    assert it.answer == "B" and it.options == ["left", "right", "up"]
    assert (it.start, it.end) == (2.0, 6.0)
    assert it.video == mvb / "video" / "star" / "Charades_v1_480" / "action_sequence_1.mp4"
    assert it.prompt == ("Question:What happens in action_sequence 1?\nOption:\n(A) left\n"
                         "(B) right\n(C) up\nOnly give the best option.\n")
    assert by_id["action_antonym/0"].start is None  # no bounds for unbounded tasks
    assert by_id["episodic_reasoning/0"].frames_fps == 3.0


def test_bounds_restrict_sampling(mvb):
    items = {it.id: it for it in load_benchmark("mvbench", mvb)}
    clip = load_clip(items["action_sequence/0"], num_frames=8)  # 4 fps: seconds 2..6
    assert clip.indices.min() >= 8 and clip.indices.max() <= 24
    full = load_clip(items["action_antonym/0"], num_frames=8)
    assert full.indices.max() > 24
    frames = load_clip(items["episodic_reasoning/0"], num_frames=4)  # 12 frames at 3 fps
    assert frames.frames.shape == (4, 16, 16, 3)
    assert frames.indices.min() >= 6 and frames.indices.max() <= 11


def test_known_replies_give_known_numbers(mvb, tmp_path):
    preds = write_predictions(tmp_path / "p.jsonl", [
        ("action_sequence/0", "(A) left"),  # right
        ("action_sequence/1", "b"),  # right: MVBench's rule is case-insensitive
        ("action_antonym/0", "The answer is a cat"),  # the article reads as A: right
        ("action_antonym/1", ""),  # empty: wrong (and counted)
    ])  # the other 36 are missing: wrong
    items = load_benchmark("mvbench", mvb, check_media=False)
    r = score("mvbench", items, read_predictions(preds), breakdowns("mvbench"))
    assert r["overall"] == 7.5 and r["n_scored"] == 40 and r["missing"] == 36
    tasks = r["breakdowns"]["task"]
    assert tasks["action_sequence"]["accuracy"] == 100.0
    assert tasks["action_antonym"]["accuracy"] == 50.0
    assert tasks["moving_count"] == {"accuracy": 0.0, "correct": 0, "n": 2}


def test_missing_task_file(mvb, tmp_path):
    root = write_mvbench(tmp_path / "m", videos=False)
    (root / "json" / "state_change.json").unlink()
    with pytest.raises(UserError, match=r"json/state_change\.json: annotation file not found"):
        load_benchmark("mvbench", root, check_media=False)


def test_bad_rows_named(tmp_path):
    root = write_mvbench(tmp_path / "m", videos=False)
    path = root / "json" / "moving_count.json"
    path.write_text(json.dumps([{"video": "x.mp4", "question": "q", "candidates": ["a", "b"]}]))
    with pytest.raises(UserError, match=r"moving_count\.json: row 0: missing field 'answer'"):
        load_benchmark("mvbench", root, check_media=False)
    path.write_text(json.dumps([{"video": "x.mp4", "question": "q", "candidates": ["a", "b"],
                                 "answer": "c"}]))
    with pytest.raises(UserError, match="'answer' 'c' is not among 'candidates'"):
        load_benchmark("mvbench", root, check_media=False)
    path.write_text("{not json")
    with pytest.raises(UserError, match="moving_count.json: not valid JSON"):
        load_benchmark("mvbench", root, check_media=False)


def test_missing_video_named(tmp_path):
    root = write_mvbench(tmp_path / "m", videos=False)
    with pytest.raises(UserError, match=r"action_sequence\.json: row 0: media "
                                        r"'action_sequence_0\.mp4' not found"):
        load_benchmark("mvbench", root)


def test_media_path_cannot_escape(tmp_path):
    root = write_mvbench(tmp_path / "m", videos=False)
    path = root / "json" / "moving_count.json"
    path.write_text(json.dumps([{"video": "../../../../x.mp4", "question": "q",
                                 "candidates": ["a", "b"], "answer": "a"}]))
    with pytest.raises(UserError, match="escapes the media root"):
        load_benchmark("mvbench", root, check_media=False)


# ----------------------------------------------------------------------------------------
# The `video` branch (what lmms-eval downloads)


@pytest.fixture(scope="module")
def mvb_video(tmp_path_factory):
    return write_mvbench(tmp_path_factory.mktemp("mvbench_video"), layout="video")


def test_layout_detected(mvb, mvb_video, tmp_path):
    assert detect_layout(mvb) == "main" and detect_layout(mvb_video) == "video"
    bare = write_mvbench(tmp_path / "json_only", videos=False)
    assert detect_layout(bare) == "main"  # annotations only: scoring needs no media
    assert len(load_benchmark("mvbench", bare, check_media=False)) == 40


def test_video_branch_items(mvb_video):
    items = {it.id: it for it in load_benchmark("mvbench", mvb_video)}  # every file found
    assert len(items) == 40
    for task, folder in LMMS_EVAL_FOLDERS.items():
        it = items[f"{task}/0"]
        assert it.video.parent == mvb_video / folder, task
        # pre-cut clips and mp4 everywhere: no bounds, no frame folders
        assert (it.start, it.end, it.frames_fps) == (None, None, None), task
    assert items["action_localization/1"].video.name == "action_localization_1_2.0_6.0.mp4"
    assert items["episodic_reasoning/0"].video.is_file()  # an mp4 clip, not frames
    assert items["action_sequence/1"].answer == "B"


def test_video_branch_clip_is_not_cut_again(mvb, mvb_video):
    """The pre-cut clip (source frames 8..23, grey 6 k) is sampled whole: bounds applied
    again would keep only its second half (grey >= 96)."""
    cut = {it.id: it for it in load_benchmark("mvbench", mvb_video)}["action_sequence/0"]
    grey = load_clip(cut, num_frames=8).frames[:, 0, 0, 0].astype(int)
    assert grey.min() < 60 and grey.max() > 120  # spans 2 s .. 6 s of the source
    whole = {it.id: it for it in load_benchmark("mvbench", mvb)}["action_sequence/0"]
    ref = load_clip(whole, num_frames=8).frames[:, 0, 0, 0].astype(int)  # main: bounded
    assert np.abs(grey - ref).max() <= 6  # the same moments, within one source frame


def test_whole_video_names_find_their_clip(mvb_video, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(mvb_video, root)
    path = root / "json" / "action_localization.json"
    rows = json.loads(path.read_text())
    for i, r in enumerate(rows):  # as the main branch names them: the whole video + bounds
        r.update(video=f"action_localization_{i}.mp4", start=2.0000001, end=6.0)
    path.write_text(json.dumps(rows))
    items = [it for it in load_benchmark("mvbench", root, tasks=["action_localization"])]
    assert [it.video.name for it in items] == ["action_localization_0_2.0_6.0.mp4",
                                               "action_localization_1_2.0_6.0.mp4"]
    rows[1]["start"] = 3.0  # no clip with these bounds
    path.write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"action_localization\.json: row 1: media "
                                        r"'action_localization_1\.mp4' not found.*video branch"):
        load_benchmark("mvbench", root, tasks=["action_localization"])


# ----------------------------------------------------------------------------------------
# A subset of tasks (--tasks) and a partial copy


def test_task_subset_of_partial_copy(tmp_path):
    root = write_mvbench(tmp_path / "p", layout="video",
                         tasks=["action_antonym", "episodic_reasoning"])
    with pytest.raises(UserError, match=r"json/action_sequence\.json: annotation file not "
                                        r"found \(to evaluate part of MVBench.*--tasks"):
        load_benchmark("mvbench", root)
    items = load_benchmark("mvbench", root, tasks=["episodic_reasoning", "action_antonym"])
    assert [it.id for it in items] == ["episodic_reasoning/0", "episodic_reasoning/1",
                                       "action_antonym/0", "action_antonym/1"]
    with pytest.raises(UserError, match=r"unknown MVBench task\(s\) \['telepathy'\]"):
        load_benchmark("mvbench", root, tasks=["telepathy"])
    with pytest.raises(UserError, match="--tasks applies to mvbench only"):
        load_benchmark("videomme", root, tasks=["action_antonym"])


def test_score_cli_with_tasks(tmp_path, capsys):
    root = write_mvbench(tmp_path / "p", videos=False, tasks=["action_antonym", "moving_count"])
    preds = write_predictions(tmp_path / "p.jsonl", [
        ("action_antonym/0", "(A) left"), ("action_antonym/1", "A"), ("moving_count/1", "B")])
    out = tmp_path / "r.json"
    args = ["score", "--benchmark", "mvbench", "--data", str(root), "--predictions", str(preds),
            "--out", str(out)]
    assert main(args) == 2
    assert "annotation file not found" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--tasks", "action_antonym, moving_count"]) == 0
    res = json.loads(out.read_text())
    assert (res["n_items"], res["n_correct"], res["missing"]) == (4, 2, 1)
    assert res["settings"]["tasks"] == ["action_antonym", "moving_count"]
    assert set(res["breakdowns"]["task"]) == {"action_antonym", "moving_count"}
