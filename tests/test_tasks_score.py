"""`stormvl score`: table + results JSON, accounting of odd ids, every bad-input case."""

import json

import pytest

from fixtures_tasks import write_predictions, write_videomme
from stormvl.cli import main
from stormvl.errors import UserError
from stormvl.tasks.score import read_predictions


@pytest.fixture(scope="module")
def vmme(tmp_path_factory):
    return write_videomme(tmp_path_factory.mktemp("vm"), videos=False)


def _run(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_scores_and_writes_json(vmme, tmp_path, capsys):
    preds = write_predictions(tmp_path / "p.jsonl", [
        ("001-1", "A"), ("001-2", "B"), ("001-3", "A"), ("002-1", "D"), ("999", "A")])
    out = tmp_path / "res" / "results.json"
    code, text, err = _run(capsys, "score", "--benchmark", "videomme", "--data", str(vmme),
                           "--predictions", str(preds), "--out", str(out))
    assert code == 0, err
    assert "videomme: overall  50.0  (3/6 scored, 6 items)" in text
    assert "missing 2 (counted wrong)" in text and "unknown ids 1" in text
    assert "Counting Problem" in text and "duration" in text
    res = json.loads(out.read_text())
    assert res["overall"] == 50.0 and res["missing"] == 2 and res["unknown"] == 1
    assert res["breakdowns"]["duration"]["short"]["accuracy"] == 66.67
    assert {r["id"]: r["correct"] for r in res["items"]}["001-3"] is False
    assert res["settings"]["subtitles"] is False


def test_cli_subtitles_flag_only_for_videomme(vmme, tmp_path, capsys):
    preds = write_predictions(tmp_path / "p.jsonl", [("001-1", "A")])
    code, _, err = _run(capsys, "score", "--benchmark", "videomme", "--data", str(vmme),
                        "--predictions", str(preds), "--subtitles")
    assert code == 0, err
    code, _, err = _run(capsys, "score", "--benchmark", "mvbench", "--data", str(vmme),
                        "--predictions", str(preds), "--subtitles")
    assert code == 2 and "videomme only" in err


BAD_LINES = [
    ('{"id": "001-1", "response": "A"}\n{oops\n', r"p\.jsonl:2: not valid JSON"),
    ('["001-1", "A"]\n', r"p\.jsonl:1: a row must be a JSON object"),
    ('{"response": "A"}\n', r"p\.jsonl:1: missing field 'id'"),
    ('{"id": "001-1"}\n', r"p\.jsonl:1: missing field 'response'"),
    ('{"id": "001-1", "response": null}\n', r"p\.jsonl:1: field 'response' must be a string"),
    ('{"id": true, "response": "A"}\n', r"p\.jsonl:1: field 'id' must be"),
    ("\n\n", r"p\.jsonl: no predictions"),
]


@pytest.mark.parametrize("content,msg", BAD_LINES)
def test_bad_prediction_files(tmp_path, content, msg):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    with pytest.raises(UserError, match=msg):
        read_predictions(p)


def test_integer_ids_are_accepted(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": 7, "response": "A"}\n')
    assert read_predictions(p).responses == {"7": "A"}


@pytest.mark.parametrize("case", ["bad_json", "no_file", "no_data", "bad_benchmark",
                                  "all_unknown", "missing_flag"])
def test_cli_bad_input_exit_2_and_nothing_written(vmme, tmp_path, capsys, case):
    preds = write_predictions(tmp_path / "p.jsonl", [("001-1", "A")])
    args = {"--benchmark": "videomme", "--data": str(vmme), "--predictions": str(preds)}
    if case == "bad_json":
        preds.write_text("{oops\n")
    elif case == "no_file":
        args["--predictions"] = str(tmp_path / "nope.jsonl")
    elif case == "no_data":
        args["--data"] = str(tmp_path / "no_such_dir")
    elif case == "bad_benchmark":
        args["--benchmark"] = "nosuchbench"
    elif case == "all_unknown":
        write_predictions(preds, [("x/1", "A"), ("x/2", "B")])
    elif case == "missing_flag":
        del args["--predictions"]
    out = tmp_path / "results.json"
    argv = ["score", *[x for kv in args.items() for x in kv], "--out", str(out)]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert not out.exists() and not list(tmp_path.glob(".results.json*"))
    if case != "missing_flag":
        assert err.startswith("error: ")
    expected = {"bad_json": "p.jsonl:1: not valid JSON", "no_file": "nope.jsonl",
                "no_data": "no_such_dir", "bad_benchmark": "unknown benchmark 'nosuchbench'",
                "all_unknown": "none of the 2 prediction ids belong to videomme",
                "missing_flag": "--predictions"}[case]
    assert expected in err


class RecordingJudge:
    """Stands in for the HTTP judge: records what it is shown, calls everything correct."""

    def __init__(self):
        self.calls = []

    def binary(self, question, answer, prediction):
        self.calls.append((question, answer, prediction))
        return True


@pytest.mark.parametrize("bench", ["videomme", "synth", "mvbench"])
def test_unreadable_replies_are_unmatched_and_judged(tmp_path, bench):
    """A reply with no option letter ("zzz", "") is unmatched: wrong without a judge (as in
    lmms-eval), the judge's decision with one, shown the options and the gold's text."""
    from fixtures_tasks import write_mvbench, write_synth
    from stormvl.tasks import breakdowns, load_benchmark
    from stormvl.tasks.score import score

    root = {"videomme": write_videomme, "synth": write_synth,
            "mvbench": write_mvbench}[bench](tmp_path / bench, videos=False)
    items = load_benchmark(bench, root, check_media=False)
    a, b, c = items[0], items[1], items[2]
    preds = read_predictions(write_predictions(tmp_path / "p.jsonl", [
        (a.id, "zzz"), (b.id, ""), (c.id, f"({c.answer})")]))
    plain = score(bench, items, preds, breakdowns(bench))
    verdicts = {r["id"]: (r["correct"], r["method"]) for r in plain["items"]}
    assert verdicts[a.id] == verdicts[b.id] == (False, "unmatched")
    assert verdicts[c.id] == (True, "rule")
    assert (plain["unmatched"], plain["n_correct"]) == (2, 1)
    judge = RecordingJudge()
    judged = score(bench, items, preds, breakdowns(bench), judge)
    assert [p for _, _, p in judge.calls] == ["zzz", ""]
    assert (judged["judged"], judged["unmatched"], judged["n_correct"]) == (2, 0, 3)
    question, gold, _ = judge.calls[0]
    letter = a.answer
    assert gold == f"{letter}. {a.options['ABCDE'.index(letter)]}"
    assert question.startswith(a.question) and f"\nA. {a.options[0]}\n" in question
