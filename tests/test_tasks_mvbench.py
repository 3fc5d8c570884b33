"""MVBench reader: 20 task files, official video folders, bounds, frame folders, scoring."""

import json

import pytest

from fixtures_tasks import write_mvbench, write_predictions
from stormvl.errors import UserError
from stormvl.tasks import breakdowns, load_benchmark, load_clip
from stormvl.tasks.mvbench import TASKS
from stormvl.tasks.score import read_predictions, score


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
