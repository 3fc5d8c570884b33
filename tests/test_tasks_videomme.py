"""VideoMME reader: official layout, lmms-eval prompts, subtitles of the sampled frames."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures_tasks import write_predictions, write_videomme
from stormvl.errors import UserError
from stormvl.tasks import breakdowns, load_benchmark, load_clip
from stormvl.tasks.score import read_predictions, score
from stormvl.tasks.videomme import parse_srt, subtitles_at


@pytest.fixture(scope="module")
def vmme(tmp_path_factory):
    return write_videomme(tmp_path_factory.mktemp("videomme"))


def test_items_and_default_prompt(vmme):
    items = load_benchmark("videomme", vmme)
    assert [it.id for it in items] == ["001-1", "001-2", "001-3", "002-1", "002-2", "003-1"]
    it = items[0]
    assert it.video == vmme / "data" / "vidA.mp4"
    assert it.answer == "A" and it.options == ["red", "green", "blue", "yellow"]
    assert it.categories == {"duration": "short", "domain": "Knowledge",
                             "sub_category": "Sub Knowledge", "task_type": "Counting Problem"}
    assert it.prompt == (
        "Select the best answer to the following multiple-choice question based on the video "
        "and the subtitles. Respond with only the letter (A, B, C, or D) of the correct option."
        "\nQuestion 001-1?\nA. red\nB. green\nC. blue\nD. yellow\n\n"
        "Answer with the option's letter from the given choices directly.")


def test_prompt_overrides(vmme):
    from stormvl.tasks import PromptConfig

    it = load_benchmark("videomme", vmme, PromptConfig("PRE ", "\nPOST"))[0]
    assert it.prompt.startswith("PRE Select the best answer") and it.prompt.endswith("D. yellow\n\nPOST")


def test_srt_parsing():
    import tempfile
    from pathlib import Path

    from fixtures_tasks import SRT

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.srt"
        p.write_text(SRT)
        lines = parse_srt(p)
    assert lines == [(0.0, 2.0, "hello there"), (2.0, 4.5, "second line"),
                     (8.0, 9.0, "plain line without tags")]
    assert subtitles_at(lines, [0.5]) == ["hello there"]
    assert subtitles_at(lines, [2.0, 8.99]) == ["second line", "plain line without tags"]
    assert subtitles_at(lines, [4.5, 5.0, 9.0]) == []  # [start, end): end is exclusive


def test_subtitles_follow_sampled_frames(vmme):
    items = load_benchmark("videomme", vmme, subtitles=True)
    a = items[0]
    assert a.render_prompt([5.0]).startswith("This video's subtitles are listed below: \n\n")
    assert a.render_prompt([0.1, 3.0]).startswith(
        "This video's subtitles are listed below: \nhello there\nsecond line\nSelect the best")
    assert a.render_prompt([0.1]).endswith("D. yellow\nThe best answer is:")
    # 16 uniform frames of the 10 s clip reach all three subtitle spans
    clip = load_clip(a, num_frames=16)
    assert len(clip.timestamps) == 16
    text = a.render_prompt(clip.timestamps)
    assert a.subtitles(clip.timestamps) == ["hello there", "second line", "plain line without tags"]
    assert "hello there\nsecond line\nplain line without tags\n" in text
    # a video without an .srt says so
    b = items[3]
    assert b.subtitles([1.0]) == []
    assert b.render_prompt([1.0]).startswith(
        "This video's subtitles are listed below: \nNo subtitles available\n")
    with pytest.raises(ValueError):
        a.render_prompt(None)


def test_known_replies_give_known_numbers(vmme, tmp_path):
    preds = write_predictions(tmp_path / "p.jsonl", [
        ("001-1", "A"),  # right
        ("001-2", "The answer is (B)."),  # right
        ("001-3", "b"),  # wrong: lower case is no letter
        ("002-2", "B. The ball"),  # wrong letter
        ("003-1", "(B) green"),  # right
        ("999-9", "A"),  # unknown id
        ("001-1", "C"),  # duplicate: the first reply counts
    ])  # 002-1 missing -> wrong
    items = load_benchmark("videomme", vmme, check_media=False)
    r = score("videomme", items, read_predictions(preds), breakdowns("videomme"))
    assert r["overall"] == 50.0 and (r["n_correct"], r["n_scored"]) == (3, 6)
    assert (r["missing"], r["unknown"], r["duplicates"]) == (1, 1, 1)
    assert r["missing_ids"] == ["002-1"] and r["unknown_ids"] == ["999-9"]
    b = r["breakdowns"]
    assert {k: v["accuracy"] for k, v in b["duration"].items()} == {
        "short": 66.67, "medium": 0.0, "long": 100.0}
    assert b["task_type"]["Counting Problem"] == {"accuracy": 33.33, "correct": 1, "n": 3}
    assert b["domain"]["Life Record"]["accuracy"] == 100.0


def test_missing_parquet(tmp_path):
    with pytest.raises(UserError, match="videomme.*parquet"):
        load_benchmark("videomme", tmp_path)


def test_missing_field_named(tmp_path):
    root = tmp_path / "v"
    pq.write_table(pa.Table.from_pylist([{"question_id": "1", "videoID": "x"}]),
                   (root / "videomme").mkdir(parents=True) or root / "videomme" / "test.parquet")
    with pytest.raises(UserError, match=r"test\.parquet: row 0: missing field 'duration'"):
        load_benchmark("videomme", root)


def test_missing_video_named(vmme, tmp_path):
    root = write_videomme(tmp_path / "nov", videos=False)
    with pytest.raises(UserError, match=r"videoID 'vidA'.*data/vidA\.mp4"):
        load_benchmark("videomme", root)
    assert len(load_benchmark("videomme", root, check_media=False)) == 6
