"""Turn per-run evaluation files into the demo's ``results.json``.

All numbers of the report are computed here once; the markdown, the plots and the HTML
only format them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from stormvl.demo.presets import OOD_SHIFTS, SUITE_OOD, Preset
from stormvl.demo.timing import time_spent
from stormvl.errors import UserError
from stormvl.report.stats import bootstrap_accuracy, paired_gain


def _correct_by(result: dict, key: str | None,
                labels: dict[str, str] | None = None) -> dict[str, list[bool]]:
    """Per-question correctness of one scored run, grouped by a category (None = all) or by
    ``labels`` (question id -> group)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for row in result["items"]:
        if row["correct"] is None:
            continue
        if labels is not None:
            group = labels.get(str(row["id"]), "-")
        else:
            group = "all" if key is None else str(row.get(key, "-"))
        groups[group].append(bool(row["correct"]))
    return groups


def accuracy_table(evals: dict, methods, seeds: int, split: str, key: str | None,
                   labels: dict[str, str] | None = None) -> dict:
    """{method: {group: Estimate json}} with a bootstrap over questions and seeds."""
    out = {}
    for m in methods:
        per_seed = [_correct_by(evals[m, s, split], key, labels) for s in range(seeds)]
        groups = sorted({g for d in per_seed for g in d})
        out[m] = {g: bootstrap_accuracy([d.get(g, []) for d in per_seed]).to_json() for g in groups}
    return out


def gains(evals: dict, seeds: int, split: str, a: str, b: str) -> dict:
    """Paired per-seed gain of method a over b, averaged over families (macro)."""
    per_seed = []
    for s in range(seeds):
        fa, fb = _correct_by(evals[a, s, split], "family"), _correct_by(evals[b, s, split], "family")
        diffs = [paired_gain([fa[f]], [fb[f]])[0] for f in sorted(fa) if f in fb]
        per_seed.append(float(np.mean(diffs)) if diffs else float("nan"))
    return {"per_seed": per_seed, "mean": float(np.mean(per_seed)) if per_seed else float("nan"),
            "min": float(np.min(per_seed)) if per_seed else float("nan")}


def macro(table: dict, method: str) -> float:
    """Family-averaged accuracy (each family weighs the same)."""
    vals = [v["mean"] for g, v in table[method].items() if g != "all"]
    return float(np.mean(vals)) if vals else float("nan")


def cost_table(evals: dict, methods, seeds: int, thought_video_s: float) -> dict:
    out = {}
    for m in methods:
        costs = [evals[m, s, "test"]["cost"] for s in range(seeds)]

        def mean(f, costs=costs) -> float:
            return float(np.mean([f(c) for c in costs]))

        row = {
            "prefill_s": mean(lambda c: c["mean_latency_s"]["prefill"]),
            "rollout_s": mean(lambda c: c["mean_latency_s"]["rollout"]),
            "decode_s": mean(lambda c: c["mean_latency_s"]["decode"]),
            "tokens": mean(lambda c: c["mean_generated_tokens"]),
            "peak_memory_mb": mean(lambda c: c["peak_memory_mb"]),
        }
        # the oracle must be shown a thought video: at inference someone has to make it
        row["thought_video_s"] = thought_video_s if m == "oracle" else 0.0
        row["total_s"] = row["prefill_s"] + row["rollout_s"] + row["decode_s"] + row["thought_video_s"]
        out[m] = row
    return out


def chain_labels(data_dir: Path) -> dict[str, str]:
    """Question id -> chain-length group (``synth.chain_label``), read from the split's
    manifest so that runs scored before the breakdown existed get it too."""
    from stormvl.data.manifest import read_manifest
    from stormvl.synth.registry import chain_label

    return {s.id: chain_label(s) for s in read_manifest(data_dir / "manifest.jsonl")}


def diagnostics_subset(test_dir: Path, n: int) -> dict:
    """Which test questions the latent diagnostics answered: the first ``n`` in manifest
    order (``diagnose``), and the families among them (the manifest is sorted by family,
    so a cap below the split leaves families out)."""
    from stormvl.data.manifest import read_manifest

    rows = read_manifest(test_dir / "manifest.jsonl")
    return {"questions": min(n, len(rows)), "of": len(rows),
            "families": sorted({r.family for r in rows[:n]}),
            "all_families": sorted({r.family for r in rows})}


def train_loss(preset: Preset, method: str, run: Path, points: int = 60) -> list[list[float]]:
    """A run's training cross-entropy by global step, averaged over at most ``points``
    equal bins of steps (``[[mean step, mean ce], ...]``): every step is logged, a curve
    of 1,500 raw points would only be noise at page width. A resumed run logs the steps
    after its last checkpoint again; the last value of a step counts."""
    from stormvl.data.manifest import read_jsonl_tolerant
    from stormvl.demo.pipeline import run_stages

    by_step: dict[int, float] = {}
    for sub, first, _ in run_stages(preset, method):
        for row in read_jsonl_tolerant(run / sub / "metrics.jsonl"):
            if isinstance(row.get("step"), int) and isinstance(row.get("ce"), int | float):
                by_step[first + row["step"]] = float(row["ce"])
    if not by_step:
        return []
    steps = sorted(by_step)
    width = max(1, -(-(steps[-1] - steps[0] + 1) // points))
    bins: dict[int, list[int]] = defaultdict(list)
    for st in steps:
        bins[(st - steps[0]) // width].append(st)
    return [[round(float(np.mean(b)), 1), round(float(np.mean([by_step[x] for x in b])), 4)]
            for _, b in sorted(bins.items())]


def thought_video_cost(test_dir: Path, record: Path, n: int = 32) -> float:
    """Seconds to render one thought video with the procedural renderer (a lower bound:
    a video-generation model costs orders of magnitude more).

    The median of ``n`` renders, measured once and kept in ``record`` with the CPU it ran
    on: it differs from one process to the next (3.6 or 6.1 ms on one machine), and a
    finished demo run again must show the same cost table.
    """
    from stormvl.data.manifest import read_manifest
    from stormvl.evaluation.model import cpu_description
    from stormvl.io import read_json, write_json_atomic
    from stormvl.synth import regenerate

    if record.exists():
        kept = read_json(record, "thought-video cost record")
        if not isinstance(kept, dict) or not isinstance(kept.get("seconds_per_video"), int | float):
            raise UserError(f"{record}: field 'seconds_per_video' missing or not a number "
                            "(delete the file to measure the renderer again)")
        return float(kept["seconds_per_video"])
    samples = read_manifest(test_dir / "manifest.jsonl")[:n]
    if samples:
        regenerate(samples[0])  # untimed: the first render pays for imports and warm-up
    took = []
    for s in samples:
        t0 = time.perf_counter()
        regenerate(s)
        took.append(time.perf_counter() - t0)
    seconds = float(np.median(took)) if took else 0.0
    write_json_atomic(record, {"seconds_per_video": seconds, "videos": len(samples),
                               "cpu": cpu_description()})
    return seconds


def _goal(text: str, met: bool | None, value, unit: str) -> dict:
    """One goal row. ``unit`` says how the report shows ``value``: ``points`` (per-seed
    gains), ``accuracy_pair`` ([a, b] in %), ``x_decode`` / ``x_textcot`` (ratios),
    ``minutes``, ``share`` (0-1, shown in %), ``share_vs_chance`` ([share, chance]),
    ``cosine``."""
    def tidy(v):
        return round(float(v), 4) if isinstance(v, float | np.floating) else v

    value = [tidy(v) for v in value] if isinstance(value, list) else tidy(value)
    return {"goal": text, "met": met, "value": value, "unit": unit}


def goals(res: dict, preset: Preset) -> list[dict]:
    """The method's success criteria, in plain words, checked against the measured numbers."""
    acc, g, cost, diag = res["accuracy"], res["gains"], res["cost"], res["diagnostics"]
    out = []
    if "storm" in acc["test"]:
        for other, need in (("direct", 10.0), ("latent", 5.0)):
            if other in acc["test"]:
                gg = g["test"][f"storm-{other}"]
                out.append(_goal(f"storm beats {other} on test by at least {need:g} points, "
                                 "in every seed", bool(gg["min"] >= need), gg["per_seed"], "points"))
                for split in preset.ood_splits:
                    go = g[split][f"storm-{other}"]
                    out.append(_goal(f"storm's gain over {other} holds on {split} (above 0 in "
                                     "every seed)", bool(go["min"] > 0), go["per_seed"], "points"))
        if "oracle" in acc["test"]:
            m = res["macro"]["test"]
            out.append(_goal("the oracle, shown the thought video, scores at least storm's test "
                             "accuracy", bool(m["oracle"] >= m["storm"]), [m["oracle"], m["storm"]],
                             "accuracy_pair"))
    if {"storm", "direct"} <= set(cost):
        extra = cost["storm"]["total_s"] - cost["direct"]["total_s"]
        # the first reply token comes from the prefill's logits: tokens - 1 decode forwards
        step = cost["direct"]["decode_s"] / max(1.0, cost["direct"]["tokens"] - 1)
        ratio = extra / max(1e-9, preset.k * step)
        out.append(_goal(f"storm's latency over direct's costs at most 1.1 x the time of K = "
                         f"{preset.k} decoded tokens", bool(ratio <= 1.1), round(ratio, 3),
                         "x_decode"))
    if {"storm", "textcot"} <= set(cost):
        r = cost["storm"]["total_s"] / max(1e-9, cost["textcot"]["total_s"])
        out.append(_goal("storm answers in at most 0.3 x textcot's latency", bool(r <= 0.3),
                         round(r, 3), "x_textcot"))
    t = res.get("time")
    if preset.minutes is not None and t:
        out.append(_goal(f"the {preset.name} demo takes at most {preset.minutes:g} min of wall "
                         f"time (every stage and invocation; {t['cores']} cores, "
                         f"{t.get('cpu', 'not recorded')})",
                         bool(t["total_min"] <= preset.minutes), t["total_min"], "minutes"))
    for seed, d in sorted(diag.get("storm", {}).items()):
        sw = d["interventions"]["swap"]["answer_change"]
        out.append(_goal(f"storm seed {seed}: its latents are used (swapping in another "
                         "question's changes at least 30% of answers)", bool(sw >= 0.3), sw, "share"))
        if "alignment" in d and "retrieval" in d["alignment"]:
            r = d["alignment"]["retrieval"]
            out.append(_goal(f"storm seed {seed}: a latent picks its own thought-video segment "
                             "at 3 x chance or more", bool(r["mean"] >= 3 * r["chance"]),
                             [r["mean"], r["chance"]], "share_vs_chance"))
        out.append(_goal(f"storm seed {seed}: latents differ between questions (mean cosine "
                         "below 0.9)", bool(d["diversity"]["mean"] < 0.9), d["diversity"]["mean"],
                         "cosine"))
    return out


def assemble_results(preset: Preset, out: Path, evals: dict, curves: dict, diags: dict) -> dict:
    """Everything the report shows, as plain JSON data."""
    methods = [m for m in preset.methods if (m, 0, "test") in evals]
    seeds = preset.seeds
    res: dict = {"preset": asdict(preset), "methods": methods, "seeds": seeds}
    res["splits"] = ["test", *preset.ood_splits]
    res["split_notes"] = {s: SUITE_OOD if s == "ood" else OOD_SHIFTS[s] for s in preset.ood_splits}
    res["accuracy"], res["by_difficulty"], res["macro"], res["gains"] = {}, {}, {}, {}
    res["by_chain"] = {}
    for split in res["splits"]:
        table = accuracy_table(evals, methods, seeds, split, "family")
        res["accuracy"][split] = table
        res["by_difficulty"][split] = accuracy_table(evals, methods, seeds, split, "difficulty")
        chains = chain_labels(out / "data" / split)
        res["by_chain"][split] = {
            m: {g: v for g, v in t.items() if g != "-"}
            for m, t in accuracy_table(evals, methods, seeds, split, None, chains).items()}
        res["overall"] = res.get("overall", {})
        res["overall"][split] = {m: v["all"] for m, v in
                                 accuracy_table(evals, methods, seeds, split, None).items()}
        res["macro"][split] = {m: macro(table, m) for m in methods}
        res["gains"][split] = {f"storm-{o}": gains(evals, seeds, split, "storm", o)
                               for o in ("direct", "latent") if "storm" in methods and o in methods}
    res["chance"] = 25.0
    render = thought_video_cost(out / "data" / "test", out / "eval" / "thought_video_cost.json")
    res["cost"] = cost_table(evals, methods, seeds, render)
    res["curves"] = {m: {str(s): curves[m, s] for s in range(seeds)} for m in methods}
    res["train_loss"] = {m: {str(s): train_loss(preset, m, out / "runs" / m / f"seed{s}")
                             for s in range(seeds)} for m in methods}
    res["diagnostics"] = {}
    for (m, s), d in diags.items():
        res["diagnostics"].setdefault(m, {})[str(s)] = d
    if diags:
        res["diagnostics_subset"] = diagnostics_subset(out / "data" / "test",
                                                       max(d["n"] for d in diags.values()))
    if "storm" in methods:
        from stormvl.demo.pipeline import run_stages

        _, (_, stage2_start, _) = run_stages(preset, "storm")  # (sub, first step, steps)
        res["storm_stage1_end"] = stage2_start  # the global step Stage I ends at
    res["time"] = time_spent(out)
    res["goals"] = goals(res, preset)
    return res

