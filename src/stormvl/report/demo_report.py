"""The demo's report: ``report.md``, PNG plots and ``index.html`` from ``results.json``.

Only formatting happens here; every number comes from the results dict, printed with one
formatter (``_f``), so the test that compares report.md with results.json can be exact.
"""

from __future__ import annotations

import json
from pathlib import Path

from stormvl.demo.pipeline import HEARTBEAT_S
from stormvl.io import write_text_atomic
from stormvl.report.render import bar_plot, html_page, line_plot, md_table


def _f(x) -> str:
    """The one number format of the report."""
    if x is None:
        return "-"
    try:
        return f"{float(x):.1f}"
    except (TypeError, ValueError):
        return str(x)


def _est(e: dict | None) -> str:
    return "-" if not e else f"{_f(e['mean'])} [{_f(e['lo'])}, {_f(e['hi'])}]"


def splits(res: dict) -> list[str]:
    """The scored splits: test, then the ood ones (results from before the shifts: ood)."""
    return res.get("splits", ["test", "ood"])


def _acc_section(res: dict, split: str) -> list[str]:
    methods = res["methods"]
    table = res["accuracy"][split]
    fams = sorted({f for m in methods for f in table[m]})
    rows = [[f] + [_est(table[m].get(f)) for m in methods] for f in fams]
    rows.append(["**all questions**"] + [_est(res["overall"][split][m]) for m in methods])
    rows.append(["**family mean**"] + [_f(res["macro"][split][m]) for m in methods])
    lines = [f"## Accuracy on {split} (%, 95% bootstrap interval; chance {_f(res['chance'])})", ""]
    note = res.get("split_notes", {}).get(split)
    lines += [f"{split}: {note}.", ""] if note else []
    lines += [md_table(["family"] + methods, rows), ""]
    diff = res["by_difficulty"][split]
    levels = sorted({lv for m in methods for lv in diff[m]})
    lines += [f"By difficulty ({split}):", "",
              md_table(["difficulty"] + methods, [[lv] + [_est(diff[m].get(lv)) for m in methods]
                                                    for lv in levels]), ""]
    chain = res.get("by_chain", {}).get(split, {})
    groups = sorted({g for m in methods for g in chain.get(m, {})},
                    key=lambda g: (g.rsplit(" ", 1)[0], int(g.rsplit(" ", 1)[1])))
    if groups:
        lines += [f"By chain length ({split}: how many hidden changes there were to follow):", "",
                  md_table(["family: knob value"] + methods,
                           [[g] + [_est(chain[m].get(g)) for m in methods] for g in groups]), ""]
    for name, g in res["gains"][split].items():
        lines.append(f"- paired gain {name} ({split}, family mean, per seed): "
                     + ", ".join(_f(v) for v in g["per_seed"]) + f"; mean {_f(g['mean'])}")
    lines.append("")
    return lines


def _cost_section(res: dict) -> list[str]:
    header = ["method", "prefill s", "latent rollout s", "decode s", "thought video s",
              "total s", "tokens", "peak MB"]
    rows = [[m, f"{c['prefill_s']:.4f}", f"{c['rollout_s']:.4f}", f"{c['decode_s']:.4f}",
             f"{c['thought_video_s']:.4f}", f"{c['total_s']:.4f}", _f(c["tokens"]),
             _f(c["peak_memory_mb"])] for m, c in res["cost"].items()]
    return ["## Inference cost (mean per question, batched; test split)", "",
            md_table(header, rows), "",
            "The oracle's thought-video time is the procedural renderer's (a lower bound: "
            "a video-generation model costs far more).", ""]


def _time_section(res: dict) -> list[str]:
    t = res.get("time")
    if not t:
        return []
    rows = [[stage, _f(m)] for stage, m in t["stages_min"].items()] + [["**total**", _f(t["total_min"])]]
    return ["## Wall time (minutes)", "",
            md_table(["stage", "minutes"], rows), "",
            f"Summed over the {t['invocations']} invocation(s) recorded in timing.jsonl on "
            f"{t['cores']} cores ({t.get('cpu', 'not recorded')}); a stage that did not end (killed, "
            f"failed) counts up to its last heartbeat, at most {HEARTBEAT_S:g} s short "
            f"({t.get('interrupted', 0)} such stage(s) here). "
            "`train` includes scoring each finished run (val curve, ood splits, diagnostics) in "
            "the training workers; `eval` is the test split (latency), one run at a time.", ""]


def _diag_section(res: dict) -> list[str]:
    lines = ["## Latent diagnostics (test questions)", ""]
    header = ["method", "seed", "acc", "diversity cos", "swap: answers changed", "swap: follows donor",
              "swap: acc drop", "zero: acc drop", "noise: acc drop", "probe acc per step (majority)",
              "retrieval top-1 (chance)"]
    rows = []
    for m, per_seed in res["diagnostics"].items():
        for s, d in per_seed.items():
            iv = d["interventions"]
            probe = d.get("probe")
            pr = "-" if not probe else " / ".join(
                f"{_f(100 * p)} ({_f(100 * q)})" for p, q in zip(probe["per_step"], probe["majority"], strict=True))
            ret = d.get("alignment", {}).get("retrieval")
            rt = "-" if not ret else f"{_f(100 * ret['mean'])} ({_f(100 * ret['chance'])})"
            rows.append([m, s, _f(d["accuracy"]), f"{d['diversity']['mean']:.3f}",
                         _f(100 * iv["swap"]["answer_change"]), _f(100 * iv["swap"]["follows_donor"]),
                         _f(iv["swap"]["accuracy_drop"]), _f(iv["zero"]["accuracy_drop"]),
                         _f(iv["noise"]["accuracy_drop"]), pr, rt])
    lines += [md_table(header, rows), ""]
    if any("Stage I" in m for m in res["diagnostics"]):
        lines += ["`storm (end of Stage I)`: the same interventions on storm's last Stage-I "
                  "checkpoint (latents aligned, before answer-only Stage II).", ""]
    for m, per_seed in res["diagnostics"].items():
        for s, d in per_seed.items():
            al = d.get("alignment")
            if al and "final_cos_per_step" in al:
                lines.append(f"- {m} seed {s}: alignment cosine per latent step at the end: "
                             + ", ".join(f"{c:.3f}" for c in al["final_cos_per_step"]))
    lines.append("")
    return lines


def _goals_section(res: dict) -> list[str]:
    head = ["## Goals (issue 6) against the measured numbers", ""]
    if not res["goals"]:
        return head + ["None applies to these methods: every goal compares storm with another "
                       "method (run storm and the method it is compared with in one folder).", ""]
    rows = [[g["goal"], {True: "met", False: "NOT met", None: "-"}[g["met"]], json.dumps(g["value"])]
            for g in res["goals"]]
    return head + [md_table(["goal", "status", "value"], rows), ""]


def _plots(res: dict, out: Path) -> list[str]:
    images = []
    methods = res["methods"]
    for split in splits(res):
        table = res["accuracy"][split]
        fams = sorted({f for m in methods for f in table[m]})
        series = {m: [(table[m][f]["mean"], table[m][f]["lo"], table[m][f]["hi"]) if f in table[m]
                      else (0.0, 0.0, 0.0) for f in fams] for m in methods}
        name = f"accuracy_{split}.png"
        bar_plot(out / name, fams, series, f"accuracy per family ({split})", chance=res["chance"])
        images.append(name)
    curves = {f"{m} seed {s}": ([p[0] for p in pts], [p[1] or 0.0 for p in pts])
              for m, per in res["curves"].items() for s, pts in per.items()}
    line_plot(out / "curves.png", curves, "validation accuracy during training", "optimizer step",
              "accuracy (%)")
    images.append("curves.png")
    cos = {}
    for m, per_seed in res["diagnostics"].items():
        for s, d in per_seed.items():
            for i, _ in enumerate((d.get("alignment") or {}).get("final_cos_per_step", [])):
                pts = d["alignment"]["curve"]
                cos[f"{m} s{s} latent {i + 1}"] = ([p["step"] for p in pts],
                                                   [p["cos_per_step"][i] for p in pts])
    if cos:
        line_plot(out / "alignment.png", cos, "alignment cosine per latent step (stage 1 then 2)",
                  "optimizer step", "cosine to thought-video target")
        images.append("alignment.png")
    cost = res["cost"]
    bar_plot(out / "cost.png", list(cost), {
        part: [(cost[m][f"{part}_s"],) * 3 for m in cost]
        for part in ("prefill", "rollout", "decode", "thought_video")
    }, "mean latency per question (s)", ylabel="seconds")
    images.append("cost.png")
    for per_seed in res["diagnostics"].values():
        for d in per_seed.values():
            fig = (d.get("alignment") or {}).get("figure")
            if fig and (out / fig).exists():
                images.append(fig)
    return images


def report_markdown(res: dict) -> str:
    p = res["preset"]
    lines = [f"# stormvl demo ({p['name']} preset)", "",
             f"Backbone {p['backbone']} trained from scratch on CPU; {res['seeds']} seed(s); "
             f"{p['steps']} optimizer steps per method (storm: {p['stage1_fraction']:.0%} Stage I, "
             f"Stage II at {p.get('stage2_lr_scale', 1.0):g} x the learning rate); "
             f"K = {p['k']}; {p['frames']} frames of {p['size']}x{p['size']}"
             + ("; latent and storm answer only through the latent chain (bottleneck)"
                if p.get("bottleneck") else "") + ".", ""]
    if p.get("latent_from_textcot"):
        n, at = p["latent_from_textcot"], ", ".join(map(str, p.get("internalize_at") or [])) or "-"
        lines += [f"latent and storm start from textcot's step-{n} checkpoint of the same seed (its "
                  f"{n} steps count in their budget) and stop writing the rationale one sentence "
                  f"at each of their steps {at}, then answer from the latents alone "
                  "(Coconut's curriculum; storm aligns its latents throughout Stage I). Their "
                  "curve points before the last of those steps score the answer the model "
                  "writes after the chain's remaining sentences.", ""]
    if p["name"] != "full":
        lines += ["This is a smoke-size run: too few steps and seeds to support claims about "
                  "the method. Use `--preset full` for evidence.", ""]
    for split in splits(res):
        lines += _acc_section(res, split)
    lines += _cost_section(res) + _time_section(res) + _diag_section(res) + _goals_section(res)
    return "\n".join(lines) + "\n"


def headline(res: dict) -> str:
    """The table printed at the end of a demo: family-mean accuracy and latency per method."""
    ood = splits(res)[1:]
    rows = [[m, _f(res["macro"]["test"][m]), _est(res["overall"]["test"][m])]
            + [_f(res["macro"][sp][m]) for sp in ood] + [f"{res['cost'][m]['total_s']:.4f}"]
            for m in res["methods"]]
    return md_table(["method", "test (family mean)", "test (all, 95% CI)"]
                    + [f"{sp} (family mean)" for sp in ood] + ["latency s"], rows)


def write_report(res: dict, out: str | Path) -> None:
    """Write results.json, report.md, the plots and index.html (each atomically)."""
    out = Path(out)
    write_text_atomic(out / "results.json", json.dumps(res, indent=2, default=float) + "\n")
    md = report_markdown(res)
    write_text_atomic(out / "report.md", md)
    images = _plots(res, out)
    write_text_atomic(out / "index.html", html_page(f"stormvl demo ({res['preset']['name']})", md, images))
