"""``stormvl report --experiment GROUP DIR``: one experiment's demo folders as one table.

``DIR`` holds one folder per preset, named as the preset (``stormvl demo --preset NAME --out
DIR/NAME``, docs/experiments.md). The shell-game presets share their test questions and
seeds, so a method of one folder pairs with a method of another question for question:
every gain here is paired, per seed, over the questions both answered, with a 95% interval
from the same two-level bootstrap (seeds, then questions) as the accuracies. A folder not run
yet, or a method it lacks, is a "-" cell, named below the table.

Writes ``DIR/<group>.json`` (every number shown), ``DIR/<group>.md``, ``DIR/<group>.html``
and ``DIR/<group>.png``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stormvl.errors import UserError
from stormvl.io import read_json, write_text_atomic
from stormvl.report import render
from stormvl.report.demo_report import Figure, Section, Table, _est
from stormvl.report.stats import bootstrap_accuracy

BASE = "stages-curriculum"  # the shell-game folder that holds direct and textcot
CHANCE = 25.0


@dataclass
class Folder:
    """A finished demo folder: its results and each run's per-question test correctness."""

    name: str
    res: dict
    correct: dict  # (method, seed) -> {question id: bool}

    def est(self, method: str) -> dict | None:
        return (self.res.get("overall", {}).get("test") or {}).get(method)


def load_folder(root: Path, name: str) -> Folder | None:
    """``root/name`` as a Folder, or None when it has no results yet (not run, or running)."""
    path = root / name / "results.json"
    if not path.is_file():
        return None
    res = read_json(path)
    correct = {}
    for m in res.get("methods", []):
        for s in range(res.get("seeds", 0)):
            f = root / name / "eval" / m / f"seed{s}" / "test" / "results.json"
            if f.is_file():
                items = read_json(f).get("items", [])
                correct[m, s] = {str(r["id"]): bool(r["correct"]) for r in items
                                 if r.get("correct") is not None}
    return Folder(name, res, correct)


def paired(a: tuple[Folder | None, str], b: tuple[Folder | None, str]) -> dict | None:
    """Gain of run a over run b in points: per seed over the questions both answered, and
    mean [95% CI] by the two-level bootstrap of the per-question differences."""
    (fa, ma), (fb, mb) = a, b
    if fa is None or fb is None:
        return None
    diffs, per_seed = [], []
    for (m, s), ca in sorted(fa.correct.items()):
        cb = fb.correct.get((mb, s))
        if m != ma or cb is None:
            continue
        ids = sorted(set(ca) & set(cb))
        if ids:
            d = [float(ca[i]) - float(cb[i]) for i in ids]
            diffs.append(d)
            per_seed.append(round(100 * float(np.mean(d)), 2))
    if not diffs:
        return None
    e = bootstrap_accuracy(diffs).to_json()
    return {**e, "per_seed": per_seed}


def _gain(g: dict | None) -> str:
    if not g:
        return "-"
    return f"{g['mean']:+.1f} [{g['lo']:+.1f}, {g['hi']:+.1f}]"


def _seeds(g: dict | None) -> str:
    return "-" if not g else " / ".join(f"{x:+.1f}" for x in g["per_seed"])


def _cell(f: Folder | None, method: str) -> dict | None:
    return f.est(method) if f else None


def _missing(folders: dict, names) -> str | None:
    gone = [n for n in names if folders.get(n) is None]
    return (f"Not run yet (cells `-`): {', '.join(f'`{n}`' for n in gone)}." if gone else None)


# --- the groups ----------------------------------------------------------------------------


RECIPES = (  # (recipe, its both-stages folder, its Stage-I-only folder, what it is)
    ("curriculum", "stages-curriculum", "stages-curriculum-stage1",
     "from textcot's step 1000, its written rationale dropped one sentence at a time"),
    ("scratch", "stages-scratch", "stages-scratch-stage1",
     "STORM's recipe from a fresh model: no rationale anywhere"),
    ("textcot start", "stages-textcot", "stages-textcot-stage1",
     "STORM's recipe from textcot's step 1000 (a model that already reasons in text): "
     "no rationale in storm's own training"),
)


def stages(folders: dict) -> dict:
    base = folders.get(BASE)
    rows = []
    for recipe, both, s1, what in RECIPES:
        fb, f1 = folders.get(both), folders.get(s1)
        rows.append({
            "recipe": recipe, "what": what,
            "stage1_only": _cell(f1, "storm"), "stage2_only": _cell(fb, "latent"),
            "both": _cell(fb, "storm"),
            "both_vs_direct": paired((fb, "storm"), (base, "direct")),
            "both_vs_stage2": paired((fb, "storm"), (fb, "latent")),
            "both_vs_stage1": paired((fb, "storm"), (f1, "storm")),
        })
    # "which recipe for data without rationales": the two rationale-free rows, paired
    fs, ft = folders.get("stages-scratch"), folders.get("stages-textcot")
    return {"rows": rows, "direct": _cell(base, "direct"), "textcot": _cell(base, "textcot"),
            "textcot_vs_scratch": paired((ft, "storm"), (fs, "storm"))}


def no_rationale_reading(t: dict) -> str | None:
    """The stage table's answer for data with thought videos but no rationales, in words."""
    rows = {r["recipe"]: r for r in t["rows"]}
    free = [rows[k] for k in ("scratch", "textcot start") if rows[k]["both"]]
    if not free:
        return None
    best = max(free, key=lambda r: r["both"]["mean"])
    text = (f"Data without rationales: the better rationale-free recipe here is *{best['recipe']}*, "
            f"storm {_est(best['both'])}, {_gain(best['both_vs_direct'])} over direct")
    g = t.get("textcot_vs_scratch")
    if g:
        clear = g["lo"] > 0 or g["hi"] < 0
        text += (f"; textcot start - scratch {_gain(g)}, "
                 + ("a clear difference" if clear else "within noise: either start will do"))
    cur = rows["curriculum"]
    if cur["both"]:
        text += (f". The curriculum, which needs rationales, gives {_est(cur['both'])} "
                 f"({_gain(cur['both_vs_direct'])} over direct)")
    return text + "."


def latents(folders: dict) -> dict:
    base, rows = folders.get(BASE), []
    for name in ("latents-k2", BASE, "latents-k8", "latents-k16"):
        f = folders.get(name)
        k = f.res["preset"]["k"] if f else int(name.removeprefix("latents-k"))
        rows.append({"k": k, "folder": name, "latent": _cell(f, "latent"), "storm": _cell(f, "storm"),
                     "storm_vs_latent": paired((f, "storm"), (f, "latent")),
                     "storm_vs_direct": paired((f, "storm"), (base, "direct"))})
    return {"rows": rows, "direct": _cell(base, "direct")}


def thoughts(folders: dict) -> dict:
    base, rows = folders.get(BASE), []
    for name in (BASE, "thoughts-weak", "thoughts-strong"):
        f = folders.get(name)
        from stormvl.demo.experiments import EXPERIMENTS

        spec = dict(EXPERIMENTS[name].thought_degrade)  # the preset's, run or not
        rows.append({"folder": name, "degrade": spec, "storm": _cell(f, "storm"),
                     "vs_exact": None if name == BASE else paired((f, "storm"), (base, "storm")),
                     "vs_direct": paired((f, "storm"), (base, "direct"))})
    return {"rows": rows, "direct": _cell(base, "direct"), "latent": _cell(base, "latent")}


def breadth(folders: dict, names) -> dict:
    rows, met = [], 0
    for name in names:
        f = folders.get(name)
        row = {"family": name.removeprefix("breadth-"), "folder": name,
               **{m: _cell(f, m) for m in ("direct", "textcot", "latent", "storm", "oracle")},
               "storm_vs_direct": paired((f, "storm"), (f, "direct")),
               "storm_vs_latent": paired((f, "storm"), (f, "latent"))}
        gd, gl = row["storm_vs_direct"], row["storm_vs_latent"]
        row["goal"] = None if not (gd and gl) else bool(gd["mean"] >= 10 and gl["mean"] >= 5)
        met += bool(row["goal"])
        rows.append(row)
    done = sum(r["goal"] is not None for r in rows)
    # decided once 4 are met, or once the families left cannot make 4
    goal = True if met >= 4 else False if met + len(rows) - done < 4 else None
    return {"rows": rows, "met": met, "of": done, "goal": goal}


def retrieval(folders: dict, names) -> list[dict]:
    """The Figure-6 rows of every folder's latent and storm: means over seeds, in %."""
    out = []
    for name in names:
        f = folders.get(name)
        for m, per_seed in ((f.res.get("diagnostics") or {}).items() if f else ()):
            rs = [d["retrieval"] for d in per_seed.values() if d.get("retrieval")]
            if not rs:
                continue
            row = {"folder": name, "method": m, "seeds": len(rs), "n": rs[0]["n"],
                   "chance": {k: 100 * float(np.mean([r["chance"][k] for r in rs]))
                              for k in ("hit@1", "hit@5", "mrr")}}
            for src in ("latents", "textcot", "random"):
                got = [r[src] for r in rs if r.get(src)]
                row[src] = None if not got else {
                    way: {k: 100 * float(np.mean([g[way][k] for g in got])) for k in ("hit@1", "hit@5", "mrr")}
                    for way in ("direct", "probe")}
            out.append(row)
    return out


GROUPS = {
    "stages": ("Which stage does the work (shell game)", stages),
    "latents": ("How many latent steps (shell game)", latents),
    "thoughts": ("How good must the thought videos be (shell game)", thoughts),
    "breadth": ("Beyond the shell game: other families", None),
}


def experiment_results(root: Path, group: str) -> dict:
    from stormvl.demo.experiments import GROUPS as PRESET_GROUPS

    if group not in GROUPS:
        raise UserError(f"--experiment {group!r}: choose from {', '.join(GROUPS)}")
    names = PRESET_GROUPS[group]
    folders = {n: load_folder(root, n) for n in dict.fromkeys((BASE, *names))}
    if all(f is None for f in folders.values()):
        raise UserError(f"{root}: holds none of the {group} folders ({', '.join(names)}) with a "
                        "results.json; run them first (docs/experiments.md)")
    title, fn = GROUPS[group]
    table = breadth(folders, names) if group == "breadth" else fn(folders)
    seeds = sorted({f.res.get("seeds") for f in folders.values() if f})
    return {"group": group, "title": title, "folders": {n: f is not None for n, f in folders.items()},
            "seeds": seeds, "table": table, "retrieval": retrieval(folders, names)}


# --- rendering -----------------------------------------------------------------------------


def _spec(spec: dict | None) -> str:
    if spec is None:
        return "-"
    return ", ".join(f"{k} {v:g}" for k, v in spec.items()) or "none (exact)"


def sections(res: dict) -> list[Section]:
    t, g = res["table"], res["group"]
    s = Section("The table", "table")
    acc = "test accuracy, %, mean [95% CI] over questions and seeds"
    gain = "paired gain, points, mean [95% CI]"
    if g == "stages":
        rows = [[r["recipe"], _est(r["stage1_only"]), _est(r["stage2_only"]), _est(r["both"]),
                 _gain(r["both_vs_direct"]), _gain(r["both_vs_stage2"]), _gain(r["both_vs_stage1"])]
                for r in t["rows"]]
        s.blocks.append(Table(["recipe", "Stage I only", "Stage II only (latent)", "both (storm)",
                               "both - direct", "both - Stage II only", "both - Stage I only"],
                              rows, id="stages", caption=f"Storm's stages ({acc}; gains: {gain})"))
        s.blocks.append("\n".join(f"- *{r['recipe']}*: {r['what']}." for r in t["rows"])
                        + f"\n\nReferences: direct {_est(t['direct'])}, textcot {_est(t['textcot'])}.")
        reading = no_rationale_reading(t)
        if reading:
            s.blocks.append(reading)
    elif g == "latents":
        rows = [[r["k"], _est(r["latent"]), _est(r["storm"]), _gain(r["storm_vs_latent"]),
                 _gain(r["storm_vs_direct"])] for r in t["rows"]]
        s.blocks.append(Table(["K", "latent", "storm", "storm - latent", "storm - direct"], rows,
                              id="latents", caption=f"Latent steps ({acc}; gains: {gain})"))
        s.blocks.append(f"Reference: direct {_est(t['direct'])}.")
    elif g == "thoughts":
        rows = [[_spec(r["degrade"]), _est(r["storm"]), _gain(r["vs_exact"]), _gain(r["vs_direct"])]
                for r in t["rows"]]
        s.blocks.append(Table(["thought videos (degrade settings)", "storm",
                               "storm - storm on exact ones", "storm - direct"], rows, id="thoughts",
                              caption=f"Storm on degraded thought videos ({acc}; gains: {gain})"))
        s.blocks.append(f"References: direct {_est(t['direct'])}, latent (no thought video) "
                        f"{_est(t['latent'])}.")
    else:
        rows = [[r["family"], *(_est(r[m]) for m in ("direct", "textcot", "latent", "storm", "oracle")),
                 _gain(r["storm_vs_direct"]), _seeds(r["storm_vs_direct"]), _gain(r["storm_vs_latent"]),
                 {None: "-", True: "met", False: "NOT met"}[r["goal"]]] for r in t["rows"]]
        s.blocks.append(Table(["family", "direct", "textcot", "latent", "storm", "oracle",
                               "storm - direct", "per seed", "storm - latent",
                               "goal met"], rows, id="breadth",
                              caption=f"Each family at its level ({acc}; gains: {gain})"))
        verdict = {None: "not decided yet", True: "met", False: "NOT met"}[t["goal"]]
        s.blocks.append(f"Goal (storm >= direct + 10 and >= latent + 5 on at least 4 families): "
                        f"**{verdict}**, {t['met']} of the {t['of']} families run so far.")
    note = _missing({n: (True if ok else None) for n, ok in res["folders"].items()}, res["folders"])
    if note:
        s.blocks.append(note)
    out = [s]
    if res["retrieval"]:
        r = Section("Same-question thought-video retrieval (as the paper's Figure 6)", "retrieval")

        def three(x, way):
            return "-" if not x else " / ".join(f"{x[way][k]:.1f}" for k in ("hit@1", "hit@5", "mrr"))

        rows = [[row["folder"], row["method"], row["seeds"], row["n"], three(row["latents"], "direct"),
                 three(row["latents"], "probe"), three(row["textcot"], "probe"),
                 three(row["random"], "probe"), three({"x": row["chance"]}, "x")]
                for row in res["retrieval"]]
        r.blocks.append(Table(["folder", "method", "seeds", "questions", "latents, direct",
                               "latents, probe", "textcot rationale, probe", "random, probe",
                               "chance"], rows, id="retrieval",
                              caption="Hit@1 / Hit@5 / MRR, %, means over seeds"))
        r.blocks.append(
            "Each test question's K vectors query the thought-video targets of all questions; "
            "the right key is its own. *direct*: cosine as it is (storm through its Stage-I "
            "projector; only an alignment makes this work). *probe*: a ridge map cross-fitted "
            "over folds of questions, the same for every row. The paper reports, for its 7B "
            "model, latents Hit@1 71 / Hit@5 79 / MRR 75 against text 29 / 71 / 50 and random 0.")
        out.append(r)
    return out


def summary(res: dict) -> str:
    """The main table and its notes as plain text, for the terminal."""
    lines = [res["title"]]
    for b in sections(res)[0].blocks:
        if isinstance(b, Table):
            lines += [f"{b.caption}:", render.text_table(b.header, b.rows)]
        else:
            lines.append(b.replace("**", "").replace("`", "").replace("*", ""))
    return "\n".join(lines)


def markdown(res: dict, figure: str | None) -> str:
    lines = [f"# {res['title']}", ""]
    if figure:
        lines += [f"![{res['title']}]({figure})", ""]
    for s in sections(res):
        lines += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, str):
                lines += [b, ""]
            else:
                lines += [f"{b.caption}:", "", render.md_table(b.header, b.rows), ""]
    return "\n".join(lines) + "\n"


def _plot(res: dict, path: Path) -> bool:
    """One panel per row of the table, one bar per method / stage with its interval."""
    def est(e):
        return None if not e or math.isnan(e["mean"]) else (e["mean"], e["lo"], e["hi"])

    t, g = res["table"], res["group"]
    if g == "stages":
        keys = {"Stage I only": "stage1_only", "Stage II only": "stage2_only", "both": "both"}
        panels = [(r["recipe"], {k: est(r[v]) for k, v in keys.items()}) for r in t["rows"]]
        labels = list(keys)
    elif g == "latents":
        labels = ["latent", "storm"]
        panels = [(f"K = {r['k']}", {m: est(r[m]) for m in labels}) for r in t["rows"]]
    elif g == "thoughts":
        labels = ["storm"]
        panels = [(_spec(r["degrade"]), {"storm": est(r["storm"])}) for r in t["rows"]]
    else:
        labels = ["direct", "textcot", "latent", "storm", "oracle"]
        panels = [(r["family"], {m: est(r[m]) for m in labels}) for r in t["rows"]]
    if not any(v for _, p in panels for v in p.values()):
        return False
    render.accuracy_panels(path, panels, labels, CHANCE)
    return True


def write_experiment_report(root: str | Path, group: str) -> dict:
    root = Path(root)
    res = experiment_results(root, group)
    write_text_atomic(root / f"{group}.json", json.dumps(res, indent=1, default=float) + "\n")
    fig = f"{group}.png" if _plot(res, root / f"{group}.png") else None
    write_text_atomic(root / f"{group}.md", markdown(res, fig))
    secs = sections(res)
    if fig:
        secs[0].blocks.insert(0, Figure(fig, "Test accuracy with 95% intervals; the dashed line "
                                             "is chance (25%)."))
    write_text_atomic(root / f"{group}.html", render.html_page(res["title"], secs))
    return res
