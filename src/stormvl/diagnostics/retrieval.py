"""Same-question thought-video retrieval, as STORM's Figure 6 measures it: Hit@1, Hit@5, MRR.

Each test question's representation (K vectors) queries the thought-video targets of every
question in the pool (K vectors each, from the runs' fixed encoder); the right key is its
own question's. Rows, per seed:

- ``storm`` / ``latent``: the K states fed into the latent slots;
- ``textcot``: the final hidden states of its generated rationale (the reply before "The
  answer is"), pooled into K time-ordered segments as the targets pool the thought video:
  the paper's text baseline, a written chain's states in place of the latents;
- ``random``: Gaussian vectors of the latents' shape (chance, measured).

Two ways into the target space: ``direct``, the cosine as it is (storm through its Stage-I
projector, the others as they are when their width is the targets'), which only an
alignment can make work; and ``probe``, a ridge map cross-fitted over folds of questions
(``metrics.crossfit_map``), what a linear read-out recovers from any row, the same for all.
Keys are the targets minus their mean over the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from stormvl.diagnostics import metrics
from stormvl.io import read_json, write_json_atomic

LATENT_ROWS = ("latent", "storm")
Checkpoints = list[tuple[int, Path]]  # a run's (step, checkpoint) pairs, oldest first


def with_reply(encoded, ids: list[int]):
    """A prompt's ``Encoded`` (no target) with generated ``ids`` appended as text, at the
    positions decoding gave them (each row's largest position + 1 onwards)."""
    from stormvl.backbones.base import TEXT

    nxt = int(encoded.position_ids.max()) + 1
    pos = torch.arange(nxt, nxt + len(ids)).view(1, -1).expand(3, -1)
    return replace(encoded, input_ids=encoded.input_ids + list(ids),
                   mm_token_type_ids=encoded.mm_token_type_ids + [TEXT] * len(ids),
                   labels=encoded.labels + list(ids),
                   position_ids=torch.cat([encoded.position_ids, pos], 1), has_target=True)


def reply_states(runner, prepared: list, batch_size: int) -> list[tuple[list[int], str, torch.Tensor]]:
    """Generate each reply, then read its final hidden states in one teacher-forced pass over
    prompt + reply (a causal model gives every token the state it had while decoding).

    Returns:
        per item (generated ids, text, (T + 1, D) states): row 0 is the prompt's last
        column (it chose token 0), row t + 1 the state after reading token t.
    """
    bb, out = runner.model.backbone, []
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start:start + batch_size]
        with torch.no_grad():
            res = runner.run(chunk)
            batch = bb.collate([with_reply(p.encoded, ids)
                                for p, ids in zip(chunk, res.token_ids, strict=True)]).to(bb.device)
            ctx = bb.prepare(batch)
            h = bb.run(ctx, None, 0, ctx.inputs_embeds).float().cpu()  # (B, L, D)
        c = batch.target_col  # every row's reply starts here (left padding aligns the prompts)
        for r, (ids, text) in enumerate(zip(res.token_ids, res.texts, strict=True)):
            out.append((ids, text, h[r, c - 1:c + len(ids)]))
    return out


def rationale_length(tokenizer, ids: list[int]) -> int:
    """Reply tokens before its last "The answer is" (all of them when it has none)."""
    from stormvl.evaluation.model import _FINAL

    hits = list(_FINAL.finditer(tokenizer.decode(ids)))
    if not hits:
        return len(ids)
    cut, lo, hi = hits[-1].start(), 0, len(ids)  # the longest prefix that decodes within cut
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(tokenizer.decode(ids[:mid])) <= cut else (lo, mid - 1)
    return lo


def pooled_rationale(states: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """(T + 1, D) reply states -> (K, D): the states after the first ``n`` reply tokens in K
    contiguous segments, mean-pooled (``reduce_targets``, as the thought video is); a reply
    with no rationale falls back to the prompt's last state."""
    from stormvl.training.targets import reduce_targets

    rows = states[1:n + 1] if n else states[:1]
    return reduce_targets(rows[:, None], k)[:, 0]


def text_features(runner, items, k: int, batch_size: int) -> torch.Tensor:
    """(N, K, D) textcot's pooled rationale states of ``items``."""
    from stormvl.diagnostics.run import prepare_items

    tok = runner.model.backbone.tokenizer
    return torch.stack([pooled_rationale(s, rationale_length(tok, ids), k) for ids, _, s in
                        reply_states(runner, prepare_items(runner, items), batch_size)])


def _scores(queries: torch.Tensor, keys: torch.Tensor) -> dict:
    return metrics.hits_and_mrr(metrics.own_ranks(metrics.pair_similarity(queries, keys)))


def figure6(runs: dict[str, Checkpoints], test_dir: Path, n: int, batch_size: int,
            clip_cache: Path | None = None, seed: int = 0) -> dict:
    """Retrieval rows of one seed's runs (``runs``: method -> checkpoints; latent and / or
    storm needed, textcot optional) on the first ``n`` test questions."""
    from stormvl import evaluation
    from stormvl.data.manifest import read_manifest
    from stormvl.diagnostics.alignment import (
        _project,
        _projector,
        _run_config,
        _targets,
        checkpoint_stage,
    )
    from stormvl.diagnostics.run import collect, prepare_items
    from stormvl.tasks import load_benchmark

    items = load_benchmark("synth", test_dir)[:n]
    by_id = {s.id: s for s in read_manifest(test_dir / "manifest.jsonl")}
    samples = [by_id[it.id] for it in items]
    settings = evaluation.EvalSettings(batch_size=batch_size,
                                       clip_cache=str(clip_cache) if clip_cache else None)
    feats, direct, keys = {}, {}, None
    for m in (m for m in LATENT_ROWS if m in runs):
        ckpts = runs[m]
        own = [p for _, p in ckpts if checkpoint_stage(p) == 1] or [ckpts[-1][1]]  # storm: Stage I
        cfg = _run_config(own[-1])
        model = evaluation.load_model(ckpts[-1][1])
        runner = evaluation.Runner(model, settings)
        feats[m] = collect(runner, items, prepare_items(runner, items), batch_size).latents
        if keys is None:  # the fixed encoder is the same for every run of a demo
            targets, _ = _targets(samples, test_dir, cfg, model.backbone, model.k)  # (N, K, D_t)
            keys = targets - targets.mean(0)
        proj = _projector(own[-1], cfg, model.backbone.hidden_size) if m == "storm" else None
        direct[m] = _project(proj, feats[m]) if proj is not None else feats[m]
    if keys is None:
        raise ValueError("figure6 needs a latent or storm run")
    n_q, k = keys.shape[:2]
    if "textcot" in runs:
        runner = evaluation.Runner(evaluation.load_model(runs["textcot"][-1][1]), settings)
        feats["textcot"] = direct["textcot"] = text_features(runner, items, k, batch_size)
    width = next(iter(feats.values())).shape[-1]
    gen = torch.Generator().manual_seed(seed)
    feats["random"] = direct["random"] = torch.randn(n_q, k, width, generator=gen)
    rows = {m: {"direct": _scores(direct[m], keys) if direct[m].shape[-1] == keys.shape[-1] else None,
                "probe": _scores(metrics.crossfit_map(f, keys, seed=seed), keys)}
            for m, f in feats.items()}
    return {"n": n_q, "k": k, "chance": metrics.retrieval_chance(n_q), "rows": rows,
            "checkpoints": {m: str(c[-1][1]) for m, c in runs.items()}}


def seed_retrieval(runs: dict[tuple[str, int], Checkpoints], test_dir: Path, out_dir: Path, n: int,
                   batch_size: int, log: Callable[[str], None] = print,
                   clip_cache: Path | None = None) -> dict[tuple[str, int], dict]:
    """``figure6`` for every seed with a latent or storm run, kept in ``out_dir/seed<s>.json``
    (a folder resumed with the same runs reads it back).

    Returns:
        {(latent | storm, seed): {"n", "k", "chance", "latents": its row, "textcot": the
        seed's text row or None, "random": the seed's random row}}, for the diagnostics rows.
    """
    out = {}
    for seed in sorted({s for m, s in runs if m in LATENT_ROWS}):
        mine = {m: c for (m, s), c in runs.items() if s == seed and m in (*LATENT_ROWS, "textcot")}
        path = out_dir / f"seed{seed}.json"
        have = read_json(path) if path.is_file() else None
        done = have is not None and have["checkpoints"] == {m: str(c[-1][1]) for m, c in mine.items()}
        log(f"[diagnostics] retrieval seed {seed} ({', '.join(sorted(mine))})"
            + (": found done" if done else ""))
        if not done:
            have = figure6(mine, test_dir, n, batch_size, clip_cache, seed)
            write_json_atomic(path, have)
        r = have
        for m in LATENT_ROWS:
            if m in r["rows"]:
                out[m, seed] = {"n": r["n"], "k": r["k"], "chance": r["chance"],
                                "latents": r["rows"][m], "textcot": r["rows"].get("textcot"),
                                "random": r["rows"]["random"]}
    return out
