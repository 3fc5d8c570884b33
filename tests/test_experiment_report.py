"""`stormvl report --experiment`: folders of one experiment joined into its table, every gain
paired per seed over shared questions (checked against gains counted by hand)."""

import json
from fractions import Fraction

import pytest

from stormvl.cli import main
from stormvl.report.experiment_report import experiment_results, load_folder, paired

IDS = [f"q{i}" for i in range(10)]


def fake_folder(root, name, runs, k=4, degrade=(), diagnostics=None):
    """A finished demo folder: ``runs[method][seed]`` = how many of the 10 questions are right
    (the first n); results.json's overall cells carry that share as their mean."""
    seeds = len(next(iter(runs.values())))
    for m, per_seed in runs.items():
        for s, n in enumerate(per_seed):
            d = root / name / "eval" / m / f"seed{s}" / "test"
            d.mkdir(parents=True)
            items = [{"id": q, "correct": i < n} for i, q in enumerate(IDS)]
            (d / "results.json").write_text(json.dumps({"items": items}))
    overall = {m: {"mean": 10.0 * sum(v) / len(v), "lo": 0.0, "hi": 100.0, "n": 10 * seeds,
                   "seeds": seeds} for m, v in runs.items()}
    res = {"methods": list(runs), "seeds": seeds, "overall": {"test": overall},
           "preset": {"k": k, "thought_degrade": [list(p) for p in degrade]},
           "diagnostics": diagnostics or {}}
    (root / name / "results.json").write_text(json.dumps(res))


def test_a_paired_gain_is_the_per_seed_difference_over_shared_questions(tmp_path):
    fake_folder(tmp_path, "a", {"storm": [9, 7, 8]})
    fake_folder(tmp_path, "b", {"direct": [3, 4, 2]})
    g = paired((load_folder(tmp_path, "a"), "storm"), (load_folder(tmp_path, "b"), "direct"))
    want = [Fraction(9 - 3, 10), Fraction(7 - 4, 10), Fraction(8 - 2, 10)]
    assert g["per_seed"] == [float(100 * w) for w in want]
    assert g["mean"] == pytest.approx(float(100 * sum(want) / 3), abs=0.01)
    assert g["lo"] <= g["mean"] <= g["hi"]
    # a run missing from either side: no gain, not a zero
    assert paired((load_folder(tmp_path, "a"), "latent"), (load_folder(tmp_path, "b"), "direct")) is None
    assert paired((None, "storm"), (load_folder(tmp_path, "b"), "direct")) is None


def test_the_stage_table_pairs_across_folders_and_names_what_is_not_run(tmp_path, capsys):
    fake_folder(tmp_path, "stages-curriculum", {"direct": [3, 3, 3], "textcot": [10, 10, 10],
                                                "latent": [5, 4, 6], "storm": [8, 9, 8]})
    fake_folder(tmp_path, "stages-curriculum-stage1", {"storm": [6, 6, 7]})
    assert main(["report", str(tmp_path), "--experiment", "stages"]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "stages.json").read_text())
    cur = res["table"]["rows"][0]
    assert cur["recipe"] == "curriculum" and cur["both"]["mean"] == pytest.approx(250 / 3)
    assert cur["both_vs_direct"]["per_seed"] == [50.0, 60.0, 50.0]
    assert cur["both_vs_stage2"]["per_seed"] == [30.0, 50.0, 20.0]
    assert cur["both_vs_stage1"]["per_seed"] == [20.0, 30.0, 10.0]
    assert res["table"]["rows"][1]["both"] is None  # stages-scratch not run
    assert "Data without rationales" not in out  # neither rationale-free recipe run yet
    fake_folder(tmp_path, "stages-scratch", {"latent": [4, 4, 4], "storm": [6, 7, 6]})
    fake_folder(tmp_path, "stages-textcot", {"latent": [4, 4, 4], "storm": [7, 9, 8]})
    assert main(["report", str(tmp_path), "--experiment", "stages"]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "stages.json").read_text())
    assert res["table"]["textcot_vs_scratch"]["per_seed"] == [10.0, 20.0, 20.0]
    assert "better rationale-free recipe here is textcot start, storm 80.0" in out
    # a group not run names its rows all the same
    assert main(["report", str(tmp_path), "--experiment", "thoughts"]) == 0
    spec = [r["degrade"] for r in json.loads((tmp_path / "thoughts.json").read_text())["table"]["rows"]]
    assert spec[0] == {} and spec[2] == {"noise_sigma": 64.0, "shuffle_p": 1.0, "wrong_state_p": 1.0}
    assert "Not run yet" in out and "stages-scratch" in out and "+53.3 [" in out
    page = (tmp_path / "stages.html").read_text()
    assert 'id="stages"' in page and "stages.png" in page and (tmp_path / "stages.png").is_file()
    assert "+53.3" in (tmp_path / "stages.md").read_text()


def test_the_breadth_goal_needs_four_families_over_both_baselines(tmp_path):
    gains = {"containment": (4, 7), "event_order": (4, 7), "occluded_trajectory": (4, 7),
             "map_building": (3, 8)}  # (direct and latent right, storm right) per seed
    for fam, (base, storm) in gains.items():
        fake_folder(tmp_path, f"breadth-{fam}", {m: [base] * 3 for m in ("direct", "textcot", "latent", "oracle")}
                    | {"storm": [storm] * 3})
    res = experiment_results(tmp_path, "breadth")["table"]
    assert [r["goal"] for r in res["rows"]] == [True, True, True, True, None]
    assert res["met"] == 4 and res["goal"] is True
    # storm no better than latent on one of them, counterfactual not run: still open
    (tmp_path / "x").mkdir()
    for fam in gains:
        fake_folder(tmp_path / "x", f"breadth-{fam}", {"direct": [4] * 3, "latent": [4 if fam != "containment" else 7] * 3,
                                                       "storm": [7] * 3})
    res = experiment_results(tmp_path / "x", "breadth")["table"]
    assert res["met"] == 3 and res["goal"] is None
    fake_folder(tmp_path / "x", "breadth-counterfactual", {"direct": [5] * 3, "latent": [5] * 3,
                                                           "storm": [5] * 3})
    assert experiment_results(tmp_path / "x", "breadth")["table"]["goal"] is False


def test_retrieval_rows_average_the_seeds_and_an_empty_folder_is_refused(tmp_path, capsys):
    def r(h1):
        row = {"direct": {"hit@1": h1, "hit@5": 0.5, "mrr": 0.4}, "probe": {"hit@1": h1, "hit@5": 0.6, "mrr": 0.5}}
        return {"n": 10, "k": 4, "chance": {"hit@1": 0.1, "hit@5": 0.5, "mrr": 0.29}, "latents": row, "textcot": row, "random": row}

    diags = {"storm": {"0": {"retrieval": r(0.2)}, "1": {"retrieval": r(0.4)}}}
    fake_folder(tmp_path, "stages-curriculum", {"direct": [3, 3], "storm": [8, 8]}, diagnostics=diags)
    rows = experiment_results(tmp_path, "stages")["retrieval"]
    assert len(rows) == 1 and rows[0]["seeds"] == 2
    assert rows[0]["latents"]["direct"]["hit@1"] == pytest.approx(30.0)
    assert rows[0]["chance"]["hit@1"] == pytest.approx(10.0)
    assert main(["report", str(tmp_path), "--experiment", "stages"]) == 0
    assert "| 30.0 / 50.0 / 40.0 |" in (tmp_path / "stages.md").read_text()
    assert main(["report", str(tmp_path / "none"), "--experiment", "latents"]) == 2
    assert main(["report", str(tmp_path), "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "holds none of the latents folders" in err and "choose from stages, latents" in err
