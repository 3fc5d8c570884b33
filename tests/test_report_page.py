"""The demo's report page, from a results.json alone: real tables, figures that exist and
read at page width, numbers equal to the JSON's, and a screenshot in headless Chromium.

The results here are made up (12 families, 2 seeds, every method, diagnostics), so the
page is built in seconds without training; the end-to-end demo is tests/test_demo.py.
"""

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from stormvl.report.demo_report import goal_value, verdict, write_report

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["direct", "textcot", "latent", "storm", "oracle"]
FAMILIES = ["collision", "containment", "counterfactual", "direction", "event_count",
            "event_order", "map_building", "occluded_trajectory", "shell_game", "speed",
            "speed_relative", "state_change"]


def _est(rng, n):
    mean = float(rng.uniform(0, 100))
    return {"mean": round(mean, 2), "lo": round(max(0.0, mean - 9.3), 2),
            "hi": round(min(100.0, mean + 8.7), 2), "n": n, "seeds": 2}


def make_results() -> dict:
    """A results.json as the demo writes it (schema of demo/assemble.py), numbers random."""
    from dataclasses import asdict, replace

    from stormvl.demo.assemble import goals
    from stormvl.demo.presets import PRESETS

    preset = replace(PRESETS["test"], name="quick", k=4, seeds=2, minutes=10, ood_shifts=())
    rng = np.random.default_rng(0)
    splits = ["test", "ood"]
    res = {"preset": asdict(preset), "methods": METHODS, "seeds": 2, "splits": splits,
           "split_notes": {"ood": "each family's held-out knob ranges"}, "chance": 25.0}
    res["accuracy"] = {sp: {m: {f: _est(rng, 40) for f in FAMILIES} for m in METHODS}
                       for sp in splits}
    res["by_difficulty"] = {sp: {m: {lv: _est(rng, 160) for lv in ("easy", "hard", "medium")}
                                 for m in METHODS} for sp in splits}
    res["by_chain"] = {sp: {m: {"shell_game: swaps 1": _est(rng, 7), "shell_game: swaps 2": _est(rng, 13)}
                            for m in METHODS} for sp in splits}
    res["overall"] = {sp: {m: _est(rng, 480) for m in METHODS} for sp in splits}
    res["macro"] = {sp: {m: float(rng.uniform(0, 100)) for m in METHODS} for sp in splits}
    res["gains"] = {sp: {f"storm-{o}": {"per_seed": [12.34, -5.44], "mean": 3.45, "min": -5.44}
                         for o in ("direct", "latent")} for sp in splits}
    res["cost"] = {m: {"prefill_s": 0.0031, "rollout_s": 0.0006 * (m in ("latent", "storm")),
                       "decode_s": 0.0250 if m == "textcot" else 0.0004, "tokens": 2.0,
                       "peak_memory_mb": 612.0, "thought_video_s": 0.0037 * (m == "oracle"),
                       "total_s": 0.0}
                   for m in METHODS}
    for c in res["cost"].values():
        c["total_s"] = c["prefill_s"] + c["rollout_s"] + c["decode_s"] + c["thought_video_s"]
    curve = [[40, 25.0], [80, 31.2], [120, 37.5]]
    res["curves"] = {m: {"0": curve if m in ("direct", "oracle") else [[40, 20.0], [80, 40.0], [120, 60.0]],
                         "1": curve if m in ("direct", "oracle") else [[40, 22.0], [80, 43.0], [120, 61.0]]}
                     for m in METHODS}
    res["train_loss"] = {m: {s: [[i * 2.0, 1.4 - 0.01 * i] for i in range(60)] for s in ("0", "1")}
                         for m in METHODS}

    def diag(seed, swap, alignment):
        d = {"checkpoint": f"runs/storm/seed{seed}/stage2/checkpoints/step-000120", "n": 96, "k": 4,
             "accuracy": 41.67, "diversity": {"per_step": [0.41] * 4, "mean": 0.4123},
             "interventions": {"swap": {"answer_change": swap, "accuracy": 30.0, "accuracy_drop": 11.67,
                                        "follows_donor": 0.1875},
                               "zero": {"answer_change": 0.5, "accuracy": 25.0, "accuracy_drop": 16.67},
                               "noise": {"answer_change": 0.4, "accuracy": 27.1, "accuracy_drop": 14.57}},
             "probe": {"per_step": [0.52, 0.47, 0.4, 0.38], "majority": [0.3, 0.3, 0.29, 0.28]}}
        if alignment:
            d["alignment"] = {"final_cos_per_step": [0.4, 0.3, 0.2, 0.1],
                              "retrieval": {"per_step": [0.1] * 4, "mean": 0.0938, "chance": 0.03125},
                              "curve": [{"step": st, "stage": 1 if st <= 80 else 2,
                                         "cos_per_step": [0.1 * st / 40] * 4} for st in (20, 40, 60, 80, 100, 120)]}
        return d

    res["diagnostics"] = {"latent": {"0": diag(0, 0.05, False), "1": diag(1, 0.02, False)},
                          "storm": {"0": diag(0, 0.45, True), "1": diag(1, 0.21, True)}}
    res["diagnostics_subset"] = {"questions": 96, "of": 240, "families": FAMILIES[:5],
                                 "all_families": FAMILIES}
    res["storm_stage1_end"] = 80
    res["time"] = {"stages_min": {"data": 0.61, "train": 7.2, "eval": 0.53}, "total_min": 8.34,
                   "invocations": 1, "interrupted": 0, "cores": 2, "cpu": "Test CPU (AVX2)",
                   "heartbeat_s": 30.0}
    res["goals"] = goals(res, preset)
    return res


class Page(HTMLParser):
    """Tables by id (rows of cell texts), images, figure captions, headings, <pre> count."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.captions, self.headings = {}, [], [], []
        self.pre, self._table, self._row, self._cell, self._in = 0, None, None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", f"anon{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag in ("figcaption", "h2"):
            self._in, self._text = tag, ""
        elif tag == "pre":
            self.pre += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == self._in:
            (self.captions if tag == "figcaption" else self.headings).append(self._text.strip())
            self._in = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in:
            self._text += data


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = make_results()
    write_report(res, out)
    parser = Page()
    parser.feed((out / "index.html").read_text())
    return out, json.loads((out / "results.json").read_text()), parser


def one(x):
    """The page's one-decimal format, written independently of the report's."""
    return f"{x:.1f}"


def interval(e):
    return f"{one(e['mean'])} [{one(e['lo'])}, {one(e['hi'])}]"


def test_the_page_is_real_html_with_tables_headings_and_captioned_figures(page):
    out, res, p = page
    assert p.pre == 0  # not markdown pasted into <pre>
    assert {"In short", "Accuracy on test", "Accuracy on ood", "Training", "Are the latents used?",
            "Inference cost", "Wall time", "Goals"} <= set(p.headings)
    assert {"headline", "acc-test", "acc-ood", "difficulty-test", "chain-test", "diagnostics",
            "cost", "time", "goals"} <= set(p.tables)
    html = (out / "index.html").read_text()
    assert "|---|" not in html and "**" not in html  # markdown rendered, not shown
    assert len(p.captions) == len(p.images) and all(len(c) > 60 for c in p.captions)
    assert {"accuracy.png", "accuracy_test.png", "accuracy_ood.png", "curves.png", "alignment.png",
            "cost.png"} <= set(p.images)
    from PIL import Image

    for src in p.images:
        with Image.open(out / src) as im:
            im.verify()
    assert not any("issue" in h.lower() for h in p.headings)


def test_figures_read_at_page_width(page):
    """Shown in a ~1,000 px column, a figure is not shrunk more than 1.1x nor stretched into a
    strip (the old per-family bars were 2970 x 396 px)."""
    from PIL import Image

    out, _, p = page
    for src in p.images:
        with Image.open(out / src) as im:
            w, h = im.size
        assert 400 <= w <= 1100 and w / h <= 3.0, (src, w, h)


def test_numbers_on_the_page_equal_results_json(page):
    _, res, p = page
    head = p.tables["headline"]
    ms = {m: f"{1000 * res['cost'][m]['total_s']:.1f}" for m in METHODS}
    assert head[1:] == [[m, interval(res["overall"]["test"][m]), one(res["macro"]["test"][m]),
                         one(res["macro"]["ood"][m]), ms[m]] for m in METHODS]
    for split in res["splits"]:
        table = p.tables[f"acc-{split}"]
        assert table[0] == ["family", "questions per seed", *METHODS]
        rows = {r[0]: r[1:] for r in table[1:]}
        for fam in FAMILIES:
            assert rows[fam] == ["20"] + [interval(res["accuracy"][split][m][fam]) for m in METHODS]
        assert rows["all questions"] == ["240"] + [interval(res["overall"][split][m]) for m in METHODS]
        assert rows["family mean"] == ["-"] + [one(res["macro"][split][m]) for m in METHODS]
        chain = {r[0]: r[1] for r in p.tables[f"chain-{split}"][1:]}
        assert chain == {"shell_game: swaps 1": "4", "shell_game: swaps 2": "6"}  # small cells: counts
    cost = {r[0]: r[1:] for r in p.tables["cost"][1:]}
    assert cost["textcot"][:5] == ["3.1", "0.0", "25.0", "0.0", "28.1"]
    assert cost["oracle"][3] == "3.7" and cost["storm"][1] == "0.60"
    diag = {(r[0], r[1]): r[2:] for r in p.tables["diagnostics"][1:]}
    assert diag["storm", "0"][:4] == ["41.7", "0.41", "45.0", "18.8"]
    assert diag["storm", "0"][4] == "11.7 / 16.7 / 14.6"
    assert diag["storm", "1"][6] == "9.4 (3.1)" and diag["latent", "0"][6] == "-"
    assert p.tables["time"][-1] == ["total", one(res["time"]["total_min"])]
    goals = {r[0]: r[1:] for r in p.tables["goals"][1:]}
    assert len(goals) == len(res["goals"])
    for g in res["goals"]:
        assert goals[g["goal"]][0] == {True: "met", False: "NOT met"}[g["met"]]
    assert goals["storm beats direct on test by at least 10 points, in every seed"] == [
        "NOT met", "+12.3, -5.4 points (per seed)"]
    assert goals["storm seed 0: its latents are used (swapping in another question's changes at "
                 "least 30% of answers)"] == ["met", "45.0% of answers"]
    assert goals["storm seed 1: a latent picks its own thought-video segment at 3 x chance or more"] == [
        "met", "9.4% (chance 3.1%)"]
    ratio = res["cost"]["storm"]["total_s"] / res["cost"]["textcot"]["total_s"]
    assert goals["storm answers in at most 0.3 x textcot's latency"] == ["met", f"{ratio:.2f} x textcot"]


def test_goal_values_are_words_with_units():
    assert goal_value({"value": [-5.4], "unit": "points"}) == "-5.4 points"
    assert goal_value({"value": [0.0312, 0.03125], "unit": "share_vs_chance"}) == "3.1% (chance 3.1%)"
    assert goal_value({"value": 0.2247, "unit": "x_textcot"}) == "0.22 x textcot"
    assert goal_value({"value": 9.347, "unit": "minutes"}) == "9.3 min"
    assert goal_value({"value": [1.0, 2.0]}) == "[1.0, 2.0]"  # a results.json from before units


def test_captions_say_what_the_figures_cannot_show(page):
    """Lines that coincide are named; the diagnostics subset is said, with why."""
    out, res, p = page
    curves = next(c for c in p.captions if c.startswith("Left: accuracy on the"))
    assert "direct and oracle have the same validation curve" in curves
    html = (out / "index.html").read_text()
    assert "On the first 96 of the 240 test questions" in html
    assert "cover 5 of 12 families" in html and "so the accuracy here differs" in html


def test_the_terminal_verdict_reads_without_the_page(page, tmp_path):
    _, res, _ = page
    text = verdict(res, tmp_path)
    assert "chance 25.0%" in text
    assert "storm against direct: +3.5 points (per seed: +12.3, -5.4)" in text
    assert ("storm's latents used: in 1 of 2 seeds (swapping in another question's latents "
            "changes 45.0%, 21.0% of its answers by seed; used means 30% or more); a latent picks "
            "its own thought-video segment 9.4%, 9.4% of the time by seed (chance 3.1%)") in text
    assert "wall time 8.3 min on 2 cores" in text and "goals met:" in text
    assert text.splitlines()[-1].startswith(f"page: {tmp_path / 'index.html'}")
    for m in METHODS:
        assert any(line.split()[:1] == [m] and interval(res["overall"]["test"][m]) in line
                   for line in text.splitlines())
    assert max(map(len, text.splitlines()[:10])) <= 110  # fits a terminal


def test_the_report_needs_nothing_but_results_json(page, tmp_path):
    """`stormvl report DIR` imports nothing of the pipeline, and rebuilds an old folder's
    page from a results.json written before the page's newer fields existed."""
    out, res, _ = page
    old = json.loads(json.dumps(res))
    for key in ("train_loss", "diagnostics_subset", "storm_stage1_end"):
        del old[key]
    del old["time"]["heartbeat_s"]
    for g in old["goals"]:
        del g["unit"]
    (tmp_path / "results.json").write_text(json.dumps(old))
    code = ("import json, sys; from pathlib import Path; from stormvl.cli import main\n"
            f"assert main(['report', {str(tmp_path)!r}]) == 0\n"
            "assert not [m for m in sys.modules if m.startswith('stormvl.demo')], 'imports demo'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "index.html").is_file() and "storm against direct" in proc.stdout


def test_one_family_and_test_alone_read_too(tmp_path):
    """The shape of the full preset's families and of a preset without ood splits: lone
    panels stay readable, and the headline has no ood column."""
    from PIL import Image

    res = make_results()
    res["splits"] = ["test"]
    for key in ("accuracy", "by_difficulty", "by_chain", "overall", "macro", "gains"):
        res[key] = {"test": res[key]["test"]}
    res["accuracy"]["test"] = {m: {"shell_game": v["shell_game"]} for m, v in res["accuracy"]["test"].items()}
    write_report(res, tmp_path)
    p = Page()
    p.feed((tmp_path / "index.html").read_text())
    assert p.tables["headline"][0] == ["method", "test, all questions (95% interval)",
                                       "test, family mean", "latency (ms per question)"]
    assert "Accuracy on ood" not in p.headings
    for src in ("accuracy.png", "accuracy_test.png"):
        with Image.open(tmp_path / src) as im:
            assert im.size[0] >= 600, (src, im.size)


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no chromium (apt-get install chromium)")
def test_a_headless_chromium_screenshot_of_the_page(page, tmp_path):
    from PIL import Image

    out, _, _ = page
    shot = tmp_path / "page.png"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report_screenshot.py"), str(out),
                           "--out", str(shot)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        dark = np.asarray(im.convert("L")) < 128
    # text, tables and figures drawn: dark pixels in most bands of the page, not a blank
    assert dark.mean() > 0.005 and dark.reshape(20, -1).any(axis=1).mean() > 0.8
