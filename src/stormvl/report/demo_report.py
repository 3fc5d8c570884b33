"""The demo's report: ``report.md``, PNG figures and ``index.html`` from ``results.json``.

A consumer of ``results.json`` alone (``stormvl report DIR`` needs nothing else): every
number comes from the results dict and is printed with a few formatters (``_f`` and its
kin), so a test can compare the page with the JSON. The report is built once as sections
of paragraphs, tables and figures; ``report.md`` and the Jinja2 page are two renderings
of the same sections, and ``verdict`` is the short text ``stormvl demo`` ends with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from stormvl.io import write_text_atomic
from stormvl.report import render


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    id: str = ""  # the HTML table's id (tests find a table by it)
    caption: str = ""
    folded: bool = False  # on the page: behind a click (long breakdowns)


@dataclass
class Figure:
    src: str  # file name beside the page
    caption: str  # what it shows and how to read it (markdown)


@dataclass
class Section:
    title: str
    id: str
    blocks: list = field(default_factory=list)  # markdown paragraphs, Tables, Figures


# --- number formats ------------------------------------------------------------------


def _f(x) -> str:
    """The report's accuracy / minutes format: one decimal."""
    if x is None:
        return "-"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "-" if math.isnan(v) else f"{v:.1f}"


def _est(e: dict | None) -> str:
    return "-" if not e else f"{_f(e['mean'])} [{_f(e['lo'])}, {_f(e['hi'])}]"


def _pts(x: float) -> str:
    """A gain in points, with its sign."""
    return "-" if x is None or math.isnan(x) else f"{x:+.1f}"


def _pct(share: float) -> str:
    """A 0-1 share as a percentage."""
    return "-" if share is None or math.isnan(share) else f"{100 * share:.1f}"


def _ms(seconds: float) -> str:
    ms = 1000 * seconds
    return f"{ms:.1f}" if ms >= 1 or ms < 0.005 else f"{ms:.2f}"


def goal_value(g: dict) -> str:
    """A goal's measured value in words with its unit (``goals`` in demo/assemble)."""
    v, unit = g["value"], g.get("unit")
    if unit == "points":
        vals = v if isinstance(v, list) else [v]
        return ", ".join(_pts(x) for x in vals) + " points" + (" (per seed)" if len(vals) > 1 else "")
    if unit == "accuracy_pair":
        return f"{_f(v[0])}% against {_f(v[1])}%"
    if unit == "x_decode":
        return f"{v:.2f} x K decoded tokens"
    if unit == "x_textcot":
        return f"{v:.2f} x textcot"
    if unit == "minutes":
        return f"{_f(v)} min"
    if unit == "share":
        return f"{_pct(v)}% of answers"
    if unit == "share_vs_chance":
        return f"{_pct(v[0])}% (chance {_pct(v[1])}%)"
    if unit == "cosine":
        return f"{v:.2f}"
    return json.dumps(v)  # a results.json from before units


# --- pieces of the results -----------------------------------------------------------


def splits(res: dict) -> list[str]:
    """The scored splits: test, then the ood ones (results from before the shifts: ood)."""
    return res.get("splits", ["test", "ood"])


def _questions(res: dict, cells: list[dict | None]) -> str:
    """The question count of a table row (the same questions for every method): per seed
    when there are several."""
    e = next((c for c in cells if c), None)
    if not e:
        return "-"
    return str(round(e["n"] / max(1, e.get("seeds", 1))))


def _count_header(res: dict) -> str:
    return "questions" + (" per seed" if res["seeds"] > 1 else "")


def _storm_diag(res: dict) -> dict:
    return res.get("diagnostics", {}).get("storm", {})


def _gain_sentences(res: dict, split: str) -> list[str]:
    out = []
    for name, g in res["gains"].get(split, {}).items():
        a, b = name.split("-", 1)
        per = ", ".join(_pts(v) for v in g["per_seed"])
        seeds = f" (per seed: {per})" if len(g["per_seed"]) > 1 else ""
        out.append(f"{a} against {b}: **{_pts(g['mean'])} points**{seeds}, paired by seed on "
                   "the same questions, averaged over families")
    return out


def _latents_used_sentence(res: dict) -> str | None:
    diag = _storm_diag(res)
    if not diag:
        return None
    swaps = {s: d["interventions"]["swap"]["answer_change"] for s, d in sorted(diag.items())}
    used = sum(v >= 0.3 for v in swaps.values())
    each = ", ".join(f"{_pct(v)}%" for v in swaps.values())
    seeds = "" if len(swaps) == 1 else " by seed"
    where = ("yes" if used == len(swaps) else "no" if not used
             else f"in {used} of {len(swaps)} seeds")
    text = (f"storm's latents used: **{where}** (swapping in another question's latents "
            f"changes {each} of its answers{seeds}; used means 30% or more)")
    rets = [d["alignment"]["retrieval"] for d in diag.values()
            if "retrieval" in (d.get("alignment") or {})]
    if rets:
        text += ("; a latent picks its own thought-video segment "
                 + ", ".join(f"{_pct(r['mean'])}%" for r in rets)
                 + f" of the time{seeds} (chance {_pct(rets[0]['chance'])}%)")
    return text


def _time_sentence(res: dict) -> str | None:
    t = res.get("time")
    if not t:
        return None
    return (f"wall time {_f(t['total_min'])} min on {t['cores']} cores "
            f"({t.get('cpu', 'not recorded')}), over {t['invocations']} invocation(s)")


def _goals_sentence(res: dict) -> str | None:
    if not res["goals"]:
        return None
    met = sum(g["met"] is True for g in res["goals"])
    return f"goals met: {met} of {len(res['goals'])} (the table at the end of the page)"


def headline_table(res: dict, short: bool = False) -> Table:
    """Accuracy and latency per method; ``short``: the terminal's column names."""
    ood = splits(res)[1:]
    rows = [[m, _est(res["overall"]["test"][m]), _f(res["macro"]["test"][m])]
            + [_f(res["macro"][sp][m]) for sp in ood] + [_ms(res["cost"][m]["total_s"])]
            for m in res["methods"]]
    if short:
        header = ["method", "test [95% CI]", "test fam."] + ood + ["ms/q"]
        caption = (f"accuracy % (all questions; fam. = family mean, as every ood column), "
                   f"chance {_f(res['chance'])}%; latency ms per question")
    else:
        header = (["method", "test, all questions (95% interval)", "test, family mean"]
                  + [f"{sp}, family mean" for sp in ood] + ["latency (ms per question)"])
        caption = f"Accuracy (%) and latency; chance is {_f(res['chance'])}%"
    return Table(header, rows, id="headline", caption=caption)


# --- sections ------------------------------------------------------------------------


def _intro(res: dict) -> str:
    p = res["preset"]
    fams = len(res["accuracy"]["test"][res["methods"][0]]) if res["methods"] else 0
    text = (f"What ran: the `{p['name']}` preset. Backbone `{p['backbone']}` built from a config "
            f"and trained from scratch; {res['seeds']} seed(s); {p['steps']} optimizer steps of "
            f"{p['batch_size']} questions per method (storm: {p['stage1_fraction']:.0%} of them "
            f"in Stage I, Stage II at {p.get('stage2_lr_scale', 1.0):g} x the learning rate); "
            f"K = {p['k']} latent steps; videos of {p['frames']} frames of {p['size']} x "
            f"{p['size']} px; {fams} task famil{'y' if fams == 1 else 'ies'} of the built-in "
            "suite" + ("; latent and storm answer only through the latent chain (bottleneck)"
                       if p.get("bottleneck") else "") + ".")
    if p.get("latent_from_textcot"):
        n, at = p["latent_from_textcot"], ", ".join(map(str, p.get("internalize_at") or [])) or "-"
        text += (f" latent and storm start from textcot's step-{n} checkpoint of the same seed "
                 f"(its {n} steps count in their budget) and stop writing the rationale one "
                 f"sentence at each of their steps {at}, then answer from the latents alone "
                 "(Coconut's curriculum).")
    if res["seeds"] < 5:
        text += (f" With {res['seeds']} seed(s) a difference is one draw of the training "
                 "noise; the `full` preset trains 5 seeds per method for paired gains.")
    return text + " Every number is in `results.json`; `report.md` holds the same tables."


def _summary_section(res: dict, figs: dict) -> Section:
    s = Section("In short", "summary", [headline_table(res)])
    bullets = []
    for split in ("test",):
        bullets += _gain_sentences(res, split)
    bullets += [x for x in (_latents_used_sentence(res), _time_sentence(res), _goals_sentence(res))
                if x]
    if bullets:
        s.blocks.append("\n".join(f"- {b}." for b in bullets))
    if "overview" in figs:
        s.blocks.append(Figure(figs["overview"], (
            "Accuracy on each split, all questions: a bar per method with its 95% interval "
            f"(bootstrap over questions{' and seeds' if res['seeds'] > 1 else ''}); the dashed "
            f"line is chance ({_f(res['chance'])}%). A bar at the line is guessing.")))
    return s


def _accuracy_section(res: dict, split: str, figs: dict) -> Section:
    methods = res["methods"]
    s = Section(f"Accuracy on {split}", f"accuracy-{split}")
    note = res.get("split_notes", {}).get(split)
    if note:
        s.blocks.append(f"`{split}`: {note}.")
    if f"acc-{split}" in figs:
        s.blocks.append(Figure(figs[f"acc-{split}"], (
            f"Accuracy per family on {split}: one panel per family (its question count in the "
            "title), a bar per method with its 95% interval; the dashed line is chance. "
            "Small families have wide intervals.")))
    table = res["accuracy"][split]
    fams = sorted({f for m in methods for f in table[m]})
    rows = [[f, _questions(res, [table[m].get(f) for m in methods])]
            + [_est(table[m].get(f)) for m in methods] for f in fams]
    overall = [res["overall"][split][m] for m in methods]
    rows.append(["all questions", _questions(res, overall)] + [_est(e) for e in overall])
    rows.append(["family mean", "-"] + [_f(res["macro"][split][m]) for m in methods])
    s.blocks.append(Table(["family", _count_header(res)] + methods, rows, id=f"acc-{split}",
                          caption=f"Accuracy on {split} (%, 95% interval; chance "
                                  f"{_f(res['chance'])}%)"))
    gains = _gain_sentences(res, split)
    if gains:
        s.blocks.append("\n".join(f"- {g}." for g in gains))
    diff = res["by_difficulty"][split]
    levels = sorted({lv for m in methods for lv in diff[m]})
    s.blocks.append(Table(
        ["difficulty", _count_header(res)] + methods,
        [[lv, _questions(res, [diff[m].get(lv) for m in methods])]
         + [_est(diff[m].get(lv)) for m in methods] for lv in levels],
        id=f"difficulty-{split}", caption=f"By difficulty ({split})", folded=True))
    chain = res.get("by_chain", {}).get(split, {})
    groups = sorted({g for m in methods for g in chain.get(m, {})},
                    key=lambda g: (g.rsplit(" ", 1)[0], int(g.rsplit(" ", 1)[1])))
    if groups:
        s.blocks.append(Table(
            ["family: knob value", _count_header(res)] + methods,
            [[g, _questions(res, [chain[m].get(g) for m in methods])]
             + [_est(chain[m].get(g)) for m in methods] for g in groups],
            id=f"chain-{split}", folded=True,
            caption=f"By chain length ({split}: how many hidden changes there were to follow)"))
    return s


def _coinciding(curves: dict) -> list[list[str]]:
    """Groups of methods whose validation curves are the same in every seed."""
    groups: dict[str, list[str]] = {}
    for m, per_seed in curves.items():
        groups.setdefault(json.dumps(per_seed, sort_keys=True), []).append(m)
    return [g for g in groups.values() if len(g) > 1]


def _training_section(res: dict, figs: dict) -> Section:
    s = Section("Training", "training")
    p = res["preset"]
    if "curves" in figs:
        same = _coinciding(res["curves"])
        note = "".join(f" {' and '.join(g)} have the same validation curve (their markers nest)."
                       for g in same)
        steps = sorted({pt[0] for per in res["curves"].values() for pts in per.values() for pt in pts})
        s.blocks.append(Figure(figs["curves"], (
            f"Left: accuracy on the {p['n_val']} validation questions at each saved checkpoint "
            f"(steps {', '.join(map(str, steps))}), one colour and marker per method; the dashed "
            "line is chance. Right: training cross-entropy per token, averaged over bins of "
            "steps (textcot's also covers its written rationale, so its level is not comparable)."
            + note)))
        if p.get("latent_from_textcot"):
            s.blocks.append("latent's and storm's curve points before their last curriculum step "
                            "score the answer written after the rationale's remaining sentences.")
    if "alignment" in figs:
        s.blocks.append(Figure(figs["alignment"], (
            "storm's alignment: the cosine between each projected latent and its thought-video "
            "target, on the first test questions, at every checkpoint of both stages. The "
            "dotted line is where Stage I (alignment) ends and answer-only Stage II begins: a "
            "fall after it means Stage II undid the alignment.")))
    return s


def _diag_section(res: dict, figs: dict) -> Section:
    s = Section("Are the latents used?", "latents")
    sub = res.get("diagnostics_subset")
    if sub:
        if sub["questions"] >= sub["of"]:
            s.blocks.append(f"On all {sub['of']} test questions.")
        else:
            missing = [f for f in sub["all_families"] if f not in sub["families"]]
            s.blocks.append(
                f"On the first {sub['questions']} of the {sub['of']} test questions (the "
                "preset's `diag_n`): each diagnostic answers every question four times (as is, "
                "latents swapped, zeroed, noised) and fits a probe per latent step, so it is "
                f"capped to keep the demo short. They cover {len(sub['families'])} of "
                f"{len(sub['all_families'])} families ({', '.join(sub['families'])})"
                + (f"; not {', '.join(missing)}" if missing else "")
                + ", so the accuracy here differs from the test table's.")
    header = ["method", "seed", "accuracy here (%)", "latent cosine between questions",
              "swap: answers changed (%)", "swap: answer is the donor's (%)",
              "accuracy drop, swap / zero / noise (points)", "state probe per step, % (majority)",
              "own segment retrieved, % (chance)"]
    rows = []
    for m, per_seed in res["diagnostics"].items():
        for seed, d in per_seed.items():
            iv = d["interventions"]
            probe = d.get("probe")
            pr = "-" if not probe else " / ".join(
                f"{_pct(a)} ({_pct(b)})" for a, b in zip(probe["per_step"], probe["majority"], strict=True))
            ret = d.get("alignment", {}).get("retrieval")
            rt = "-" if not ret else f"{_pct(ret['mean'])} ({_pct(ret['chance'])})"
            drops = " / ".join(_f(iv[k]["accuracy_drop"]) for k in ("swap", "zero", "noise"))
            rows.append([m, seed, _f(d["accuracy"]), f"{d['diversity']['mean']:.2f}",
                         _pct(iv["swap"]["answer_change"]), _pct(iv["swap"]["follows_donor"]),
                         drops, pr, rt])
    s.blocks.append(Table(header, rows, id="diagnostics", caption="Latent diagnostics"))
    s.blocks.append(
        "- *Latent cosine*: mean cosine of a latent step between questions (1.00: the same "
        "vector for every question).\n"
        "- *Swap*: each question's latents replaced by those of a question with another answer; "
        "used latents change answers, and answers that become the donor's show the latents "
        "carry the answer itself. *Zero* / *noise*: latents replaced by zeros / by random "
        "vectors of the same norm.\n"
        "- *State probe*: a linear probe (5-fold) reads the hidden scene state at the end of "
        "time segment k from latent k; it says something only above the majority baseline.\n"
        "- *Own segment retrieved*: latent k, through storm's Stage-I projector, picks its own "
        "question's thought-video target k among a group of questions' (chance: 1 / group).")
    ret_rows = _retrieval_rows(res)
    if ret_rows:
        s.blocks.append(Table(
            ["method", "seed", "questions", "latents, direct", "latents, probe",
             "textcot rationale, probe", "random, probe", "chance"], ret_rows,
            id="retrieval", caption="Same-question thought-video retrieval, Hit@1 / Hit@5 / MRR "
            "(%), as the paper's Figure 6"))
        s.blocks.append(
            "Each question's K vectors query the thought-video targets of every question; the "
            "right key is its own. *direct*: the cosine as it is (storm through its Stage-I "
            "projector: only an alignment makes it work); *probe*: a ridge map cross-fitted over "
            "folds of questions, the same for every row. *textcot rationale*: the hidden states "
            "of textcot's written chain pooled into K segments, the paper's text baseline.")
    if any("Stage I" in m for m in res["diagnostics"]):
        s.blocks.append("`storm (end of Stage I)`: the same interventions on storm's last Stage-I "
                        "checkpoint (latents aligned, before answer-only Stage II).")
    for src in figs.get("latents", []):
        s.blocks.append(Figure(src, (
            "storm's latents against thought-video frames, one test question per family. For "
            "each latent step: *true* is the thought-video frame at the end of that step's time "
            "segment; *nearest* is the frame closest to the projected latent among the "
            "thought-video frames of this question and of other questions, labelled *own* "
            "(with its frame) or *other*. Right picks look like the true frame and say *own*; "
            "*other* or another frame is a failure.")))
    return s


def _retrieval_rows(res: dict) -> list[list[str]]:
    """One row per run with a Figure-6 retrieval (``diagnostics.retrieval``)."""
    def three(x: dict | None, way: str | None = None) -> str:
        x = x if not x or way is None else x[way]
        return "-" if not x else " / ".join(_pct(x[k]) for k in ("hit@1", "hit@5", "mrr"))

    rows = []
    for m, per_seed in res["diagnostics"].items():
        for seed, d in per_seed.items():
            r = d.get("retrieval")
            if r:
                rows.append([m, seed, str(r["n"]), three(r["latents"], "direct"),
                             three(r["latents"], "probe"), three(r.get("textcot"), "probe"),
                             three(r["random"], "probe"), three(r["chance"])])
    return rows


def _cost_section(res: dict, figs: dict) -> Section:
    s = Section("Inference cost", "cost")
    if "cost" in figs:
        s.blocks.append(Figure(figs["cost"], (
            "Mean latency per question on the test split, split into its parts (ms): "
            "reading the prompt and video (prefill), the latent rollout, decoding the reply, "
            "and for the oracle rendering its thought video. Measured one run at a time on "
            "one thread.")))
    header = ["method", "prefill ms", "latent rollout ms", "decode ms", "thought video ms",
              "total ms", "tokens generated", "peak memory MB"]
    rows = [[m, _ms(c["prefill_s"]), _ms(c["rollout_s"]), _ms(c["decode_s"]),
             _ms(c["thought_video_s"]), _ms(c["total_s"]), _f(c["tokens"]), _f(c["peak_memory_mb"])]
            for m, c in res["cost"].items()]
    s.blocks.append(Table(header, rows, id="cost",
                          caption="Mean per question, batched, test split"))
    s.blocks.append("The oracle's thought-video time is the procedural renderer's, a lower "
                    "bound: a video-generation model costs far more.")
    return s


def _time_section(res: dict) -> Section | None:
    t = res.get("time")
    if not t:
        return None
    rows = [[stage, _f(m)] for stage, m in t["stages_min"].items()] + [["total", _f(t["total_min"])]]
    beat = t.get("heartbeat_s")
    short = f", at most {beat:g} s short" if beat else ""
    return Section("Wall time", "time", [
        Table(["stage", "minutes"], rows, id="time"),
        f"Summed over the {t['invocations']} invocation(s) recorded in `timing.jsonl`, on "
        f"{t['cores']} cores ({t.get('cpu', 'not recorded')}). A stage that did not end (killed, "
        f"failed) counts up to its last heartbeat{short} ({t.get('interrupted', 0)} such "
        "stage(s) here). `train` includes scoring each finished run (validation curve, ood "
        "splits, diagnostics) in the training workers; `eval` is the test split (latency), "
        "one run at a time."])


def _goals_section(res: dict) -> Section:
    s = Section("Goals", "goals")
    if not res["goals"]:
        s.blocks.append("None applies to these methods: every goal compares storm with another "
                        "method (run storm and the method it is compared with in one folder).")
        return s
    rows = [[g["goal"], {True: "met", False: "NOT met", None: "-"}[g["met"]], goal_value(g)]
            for g in res["goals"]]
    s.blocks.append(Table(["goal", "result", "measured"], rows, id="goals",
                          caption="The method's goals against the measured numbers"))
    return s


def report_sections(res: dict, figs: dict) -> list[Section]:
    """The report, section by section; ``figs``: the figures made (``_plots``)."""
    out = [_summary_section(res, figs)]
    out += [_accuracy_section(res, split, figs) for split in splits(res)]
    out += [_training_section(res, figs)]
    if res["diagnostics"]:
        out.append(_diag_section(res, figs))
    out.append(_cost_section(res, figs))
    out += [x for x in (_time_section(res),) if x]
    out.append(_goals_section(res))
    return out


def _title(res: dict) -> str:
    return f"stormvl demo: {res['preset']['name']} preset"


# --- renderings ----------------------------------------------------------------------


def report_markdown(res: dict, figs: dict | None = None) -> str:
    lines = [f"# {_title(res)}", "", _intro(res), ""]
    for s in report_sections(res, figs or {}):
        lines += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, str):
                lines += [b, ""]
            elif isinstance(b, Figure):
                lines += [f"![{s.title}]({b.src})", "", f"*{b.caption}*", ""]
            else:
                lines += [f"{b.caption}:", ""] if b.caption else []
                lines += [render.md_table(b.header, b.rows), ""]
    return "\n".join(lines) + "\n"


def _plots(res: dict, out: Path) -> dict:
    """Write every figure; returns {role: file name} (``latents``: a list)."""
    figs: dict = {}
    methods, chance = res["methods"], res["chance"]
    if not methods:
        return figs

    def est(e):
        return None if not e else (e["mean"], e["lo"], e["hi"])

    render.accuracy_panels(out / "accuracy.png",
                           [(sp, {m: est(res["overall"][sp][m]) for m in methods})
                            for sp in splits(res)], methods, chance)
    figs["overview"] = "accuracy.png"
    for split in splits(res):
        table = res["accuracy"][split]
        fams = sorted({f for m in methods for f in table[m]})
        panels = [(f"{f} ({_questions(res, [table[m].get(f) for m in methods])} q.)",
                   {m: est(table[m].get(f)) for m in methods}) for f in fams]
        name = f"accuracy_{split}.png"
        render.accuracy_panels(out / name, panels, methods, chance)
        figs[f"acc-{split}"] = name
    render.curves_plot(out / "curves.png", res["curves"], res.get("train_loss", {}), chance,
                       "accuracy on val (%)")
    figs["curves"] = "curves.png"
    cos = {}  # {seed: {latent step: (steps, cosines)}}: storm's (the one row with alignment)
    for seed, d in _storm_diag(res).items():
        pts = (d.get("alignment") or {}).get("curve", [])
        if pts:
            cos[seed] = {i: ([p["step"] for p in pts], [p["cos_per_step"][i] for p in pts])
                         for i in range(len(pts[0]["cos_per_step"]))}
    if cos:
        render.alignment_plot(out / "alignment.png", cos, res.get("storm_stage1_end"))
        figs["alignment"] = "alignment.png"
    cost = res["cost"]
    parts = {"prefill": "prefill_s", "latent rollout": "rollout_s", "decode": "decode_s",
             "thought video": "thought_video_s"}
    render.stacked_bars(out / "cost.png", list(cost),
                        {name: [1000 * cost[m][key] for m in cost] for name, key in parts.items()},
                        "ms per question")
    figs["cost"] = "cost.png"
    figs["latents"] = [fig for per_seed in res["diagnostics"].values() for d in per_seed.values()
                       if (fig := (d.get("alignment") or {}).get("figure")) and (out / fig).exists()]
    return figs


def verdict(res: dict, folder: Path | str) -> str:
    """The few lines ``stormvl demo`` ends with: readable without opening the report."""
    t = headline_table(res, short=True)
    lines = [_title(res), f"{t.caption}:", render.text_table(t.header, t.rows), ""]
    bullets = _gain_sentences(res, "test")
    bullets += [x for x in (_latents_used_sentence(res), _time_sentence(res), _goals_sentence(res))
                if x]
    lines += [f"- {b}.".replace("**", "").replace("`", "") for b in bullets]
    lines.append(f"page: {Path(folder) / 'index.html'}  (report.md, results.json beside it)")
    return "\n".join(lines)


def write_report(res: dict, out: str | Path) -> None:
    """Write results.json, the figures, report.md and index.html (each atomically)."""
    out = Path(out)
    write_text_atomic(out / "results.json", json.dumps(res, indent=2, default=float) + "\n")
    figs = _plots(res, out)
    write_text_atomic(out / "report.md", report_markdown(res, figs))
    write_text_atomic(out / "index.html",
                      render.html_page(_title(res), report_sections(res, figs), _intro(res)))
