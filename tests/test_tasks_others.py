"""TempCompass, MMVU and synth readers: layouts, prompts, hand-computed scores, bad input."""

import json

import pytest

from fixtures_tasks import (
    TC_MC_Q,
    write_mmvu,
    write_predictions,
    write_synth,
    write_tempcompass,
)
from stormvl.errors import ManifestError, UserError
from stormvl.tasks import breakdowns, load_benchmark, load_clip
from stormvl.tasks.score import read_predictions, score


class FakeJudge:
    """Stands in for the HTTP judge: says "correct" and picks B for captions."""

    def __init__(self):
        self.binary_calls = []

    def binary(self, question, answer, prediction):
        self.binary_calls.append(prediction)
        return True

    def caption_choice(self, caption, mc_question):
        return "B. sleeping"


def _score(name, root, rows, tmp_path, judge=None):
    preds = read_predictions(write_predictions(tmp_path / "p.jsonl", rows))
    items = load_benchmark(name, root, check_media=False)
    return score(name, items, preds, breakdowns(name), judge)


# ----------------------------------------------------------------------------------------
# TempCompass

@pytest.fixture(scope="module")
def tc(tmp_path_factory):
    return write_tempcompass(tmp_path_factory.mktemp("tc"))


def test_tempcompass_items(tc):
    items = {it.id: it for it in load_benchmark("tempcompass", tc)}
    assert sorted(items) == ["caption_matching/0", "caption_matching/1", "captioning/0",
                             "multi-choice/0", "multi-choice/1", "multi-choice/2", "yes_no/0",
                             "yes_no/1"]
    mc = items["multi-choice/0"]
    assert mc.prompt == TC_MC_Q + "\nPlease directly give the best option:"
    assert mc.options == ["jumping", "sleeping", "eating", "running"] and mc.format == "mc"
    assert items["yes_no/1"].prompt == "Is the car fast?\nPlease answer yes or no:"
    assert items["captioning/0"].prompt == "Describe the video."
    assert items["captioning/0"].meta["mc_answer"] == "B. sleeping"
    assert mc.video == tc / "videos" / "v1.mp4"
    assert load_clip(mc, num_frames=4).frames.shape == (4, 16, 16, 3)


TC_PREDS = [
    ("multi-choice/0", "B"),  # right
    ("multi-choice/1", "The answer is A"),  # no rule matches: wrong without a judge
    ("multi-choice/2", "C. eating"),  # right
    ("yes_no/0", "Yes, it is"),  # right
    ("yes_no/1", "Nothing"),  # "no": right
    ("caption_matching/0", "Sentence B"),  # right
    ("captioning/0", "a cat sleeps on a sofa"),  # needs a judge
]  # caption_matching/1 missing: wrong


def test_tempcompass_rule_only_numbers(tc, tmp_path):
    r = _score("tempcompass", tc, TC_PREDS, tmp_path)
    assert (r["n_correct"], r["n_scored"], r["overall"]) == (5, 7, 71.43)
    assert (r["unmatched"], r["missing"], r["not_scored"]) == (1, 1, {"captioning": 1})
    dims = {k: v["accuracy"] for k, v in r["breakdowns"]["dim"].items()}
    assert dims == {"action": 100.0, "direction": 100.0, "order": 0.0, "speed": 50.0}
    cfg = {k: v["accuracy"] for k, v in r["breakdowns"]["config"].items()}
    assert cfg == {"caption_matching": 50.0, "multi-choice": 66.67, "yes_no": 100.0}


def test_tempcompass_with_judge(tc, tmp_path):
    judge = FakeJudge()
    r = _score("tempcompass", tc, TC_PREDS, tmp_path, judge)
    assert (r["n_correct"], r["n_scored"], r["overall"]) == (7, 8, 87.5)
    assert r["judged"] == 2 and r["not_scored"] == {}
    assert judge.binary_calls == ["The answer is A"]  # only the unmatched reply


def test_tempcompass_missing_config(tmp_path):
    root = write_tempcompass(tmp_path / "t", videos=False)
    for f in (root / "yes_no").iterdir():
        f.unlink()
    with pytest.raises(UserError, match=r"yes_no: no TempCompass yes_no parquet"):
        load_benchmark("tempcompass", root, check_media=False)


def test_tempcompass_missing_video(tmp_path):
    root = write_tempcompass(tmp_path / "t", videos=False)
    with pytest.raises(UserError, match=r"video_id 'v1'.*videos/v1\.mp4"):
        load_benchmark("tempcompass", root)


# ----------------------------------------------------------------------------------------
# MMVU

@pytest.fixture(scope="module")
def mmvu(tmp_path_factory):
    return write_mmvu(tmp_path_factory.mktemp("mmvu"))


def test_mmvu_items(mmvu):
    items = {it.id: it for it in load_benchmark("mmvu", mmvu)}
    oe, mc = items["validation_0"], items["validation_1"]
    assert oe.video == mmvu / "videos" / "Art" / "0.mp4"  # from the hub URL
    assert oe.format == "open_ended" and oe.categories["discipline"] == "Humanities_and_Social_Science"
    assert oe.prompt == ("\nQuestion:Which technique is shown?\nVisual Information: processed "
                         "video\nDo not generate any intermediate reasoning process. Directly "
                         "output the final answer.\n")
    assert mc.categories == {"discipline": "Science", "subject": "Thermodynamics",
                             "question_type": "multiple-choice"}
    assert mc.prompt.startswith("\nQuestion:Which process is shown?\nA: Isothermal compression\n")
    assert mc.prompt.endswith("E: Free expansion\nVisual Information: processed video\nDo not "
                              "generate any intermediate reasoning process. Answer directly with "
                              "the option letter from the\ngiven choices.\n")


MMVU_PREDS = [("validation_0", "dolly zoom"), ("validation_1", "B"),
              ("validation_2", "The liver"), ("validation_3", "A")]


def test_mmvu_open_ended_not_scored_without_judge(mmvu, tmp_path):
    r = _score("mmvu", mmvu, MMVU_PREDS, tmp_path)
    assert (r["n_correct"], r["n_scored"], r["overall"]) == (2, 3, 66.67)
    assert r["not_scored"] == {"open_ended": 1}
    disc = {k: v["accuracy"] for k, v in r["breakdowns"]["discipline"].items()}
    assert disc == {"Humanities_and_Social_Science": 0.0, "Science": 100.0}


def test_mmvu_open_ended_with_judge(mmvu, tmp_path):
    r = _score("mmvu", mmvu, MMVU_PREDS, tmp_path, FakeJudge())
    assert (r["n_correct"], r["n_scored"], r["overall"]) == (3, 4, 75.0)


def test_mmvu_bad_rows(tmp_path):
    root = write_mmvu(tmp_path / "m", videos=False)
    rows = json.loads((root / "validation.json").read_text())
    rows[1]["question_type"] = "essay"
    (root / "validation.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"validation\.json: row 1: field 'question_type'"):
        load_benchmark("mmvu", root, check_media=False)
    rows[1]["question_type"] = "multiple-choice"
    del rows[2]["video_path"]
    (root / "validation.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"row 2: missing field 'video_path'"):
        load_benchmark("mmvu", root, check_media=False)
    (root / "validation.json").unlink()
    with pytest.raises(UserError, match=r"validation\.json: annotation file not found"):
        load_benchmark("mmvu", root, check_media=False)


# ----------------------------------------------------------------------------------------
# synth

@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("synth"))


def test_synth_items_and_numbers(syn, tmp_path):
    items = load_benchmark("synth", syn)
    assert items[0].prompt == ("Where is the ball (s0)?\nA. cup 1\nB. cup 2\nC. cup 3\nD. cup 4\n"
                               "Answer with the option's letter from the given choices directly.")
    assert items[0].categories == {"family": "shell_game", "difficulty": "easy",
                                   "chain": "shell_game: swaps 1", "split": "test"}
    assert items[2].categories["chain"] == "-"  # no meta: not a generated item
    r = _score("synth", syn, [("s0", "A"), ("s1", "B. cup 2"), ("s2", "D")], tmp_path)
    assert (r["overall"], r["missing"]) == (50.0, 1)
    acc = {k: {g: v["accuracy"] for g, v in b.items()} for k, b in r["breakdowns"].items()}
    assert acc == {"family": {"event_order": 0.0, "shell_game": 100.0},
                   "difficulty": {"easy": 50.0, "hard": 50.0},
                   "chain": {"-": 0.0, "shell_game: swaps 1": 100.0, "shell_game: swaps 3": 100.0},
                   "split": {"ood": 0.0, "test": 66.67}}


def test_synth_bad_manifest(tmp_path):
    root = write_synth(tmp_path / "s", videos=False)
    with pytest.raises(UserError, match=r"manifest\.jsonl: row 0 \(id 's0'\): video not found"):
        load_benchmark("synth", root)
    (root / "manifest.jsonl").write_text(
        '{"id": "x", "video": "../escape.mp4", "question": "q", "options": ["a", "b"], '
        '"answer": "A"}\n')
    with pytest.raises(ManifestError, match="escapes the media root"):
        load_benchmark("synth", root, check_media=False)
    (root / "manifest.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:1: missing field 'video'"):
        load_benchmark("synth", root)


def test_media_paths_cannot_escape_the_dataset_folder(tmp_path):
    root = write_mmvu(tmp_path / "m", videos=False)
    rows = json.loads((root / "validation.json").read_text())
    rows[1]["video_path"] = "../../etc/passwd"
    (root / "validation.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"row 1: media path '../../etc/passwd' escapes"):
        load_benchmark("mmvu", root, check_media=False)
