"""The experiment presets: each a valid demo at test size, varying only what it says; and
what they add to the demo (storm with Stage I only, the retrieval rows) on tiny runs."""

import json
from dataclasses import fields, replace

import pytest
import torch

from stormvl.cli import main
from stormvl.demo.experiments import EXPERIMENTS, GROUPS, at_test_size
from stormvl.demo.pipeline import run_stages, train_all, train_config
from stormvl.demo.presets import METHODS, PRESETS

# what makes two demo folders hold the same questions (make_data's arguments)
DATA = ("families", "difficulty", "n_train", "n_val", "n_test", "n_ood", "ood_shifts",
        "suite_ood", "frames", "size", "intro", "option_order")


def configs(preset, tmp_path):
    """Every trainer config a preset's runs would use (both storm stages)."""
    out = []
    for method in preset.methods:
        for sub, _, steps in run_stages(preset, method):
            if steps:
                init = tmp_path / "textcot" if preset.latent_from_textcot and method in ("latent", "storm") else None
                stage2 = sub == "stage2"
                out.append(train_config(preset, method, 0, tmp_path / "m.jsonl", tmp_path / method / sub,
                                        steps, stage=2 if stage2 else 1, init=init,
                                        stage1=tmp_path / method / "stage1" if stage2 else None))
    return out


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_each_experiment_builds_valid_runs_at_full_and_test_size(name, tmp_path):
    for preset in (EXPERIMENTS[name], at_test_size(EXPERIMENTS[name])):
        assert preset.seeds >= 1 and set(preset.methods) <= set(METHODS)
        cfgs = configs(preset, tmp_path)
        assert cfgs and all(c.validate() == [] for c in cfgs), [c.validate() for c in cfgs]
        for method in preset.methods:  # every stage of a run shares one step budget
            assert sum(s for _, _, s in run_stages(preset, method)) + \
                (preset.latent_from_textcot if method in ("latent", "storm") else 0) == preset.steps
    assert EXPERIMENTS[name].seeds == 3 and EXPERIMENTS[name].name == name


def test_the_shell_game_experiments_share_their_questions_and_vary_what_they_say(tmp_path):
    base = PRESETS["quick"]  # the experiments' base: quick's recipe, sizes and data, 3 seeds
    assert EXPERIMENTS["stages-curriculum"] == replace(base, name="stages-curriculum", seeds=3,
                                                       minutes=None)
    for group in ("stages", "latents", "thoughts"):
        for name in GROUPS[group]:
            p = EXPERIMENTS[name]
            assert {f: getattr(p, f) for f in DATA} == {f: getattr(base, f) for f in DATA}, name
    changed = {name: sorted(f.name for f in fields(base) if f.name not in ("name", "seeds", "minutes",
                                                                             "methods")
                            and getattr(EXPERIMENTS[name], f.name) != getattr(base, f.name))
               for name in EXPERIMENTS}
    assert changed["stages-curriculum"] == []
    assert changed["stages-curriculum-stage1"] == ["stage1_fraction"]
    assert changed["stages-textcot"] == ["internalize_at"]
    assert changed["stages-textcot-stage1"] == ["internalize_at", "stage1_fraction"]
    assert changed["stages-scratch"] == ["bottleneck", "internalize_at", "latent_from_textcot"]
    assert changed["stages-scratch-stage1"] == ["bottleneck", "internalize_at", "latent_from_textcot",
                                                "stage1_fraction"]
    for k in (2, 8, 16):
        assert changed[f"latents-k{k}"] == ["k"]
    for s in ("weak", "strong"):
        assert changed[f"thoughts-{s}"] == ["thought_degrade"]
        assert EXPERIMENTS[f"thoughts-{s}"].methods == ("textcot", "storm")
    for name in GROUPS["breadth"]:
        family = name.removeprefix("breadth-")
        # their options vary from clip to clip: the chat prompt carries them
        assert changed[name] == ["families", "prompt"] and EXPERIMENTS[name].families == (family,)
        assert EXPERIMENTS[name].prompt == "chat"
        assert EXPERIMENTS[name].methods == ("direct", "textcot", "latent", "storm")
    assert "shell_game" not in {f for n in GROUPS["breadth"] for f in EXPERIMENTS[n].families}
    # the paper's recipe: no rationale in storm's own training, from scratch or from textcot
    for name in ("stages-scratch", "stages-scratch-stage1", "stages-textcot", "stages-textcot-stage1"):
        storm = [c for c in configs(EXPERIMENTS[name], tmp_path) if c.method.name == "storm"]
        assert storm and all(c.method.internalize_at == [] for c in storm), name
    assert run_stages(EXPERIMENTS["stages-scratch-stage1"], "storm") == [("stage1", 0, 1500), ("stage2", 1500, 0)]


def test_experiments_are_reachable_from_the_demo_command(monkeypatch, tmp_path, capsys):
    import stormvl.demo.pipeline as pipeline
    from stormvl.errors import UserError

    seen = []

    def fake_run_demo(preset, out, log):
        seen.append(preset)
        raise UserError("stop here")

    monkeypatch.setattr(pipeline, "run_demo", fake_run_demo)
    assert main(["demo", "--preset", "latents-k8", "--seeds", "1", "--out", str(tmp_path)]) == 2
    assert seen.pop() == replace(EXPERIMENTS["latents-k8"], seeds=1)
    assert main(["demo", "--preset", "breadth-nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--preset 'breadth-nope': choose from" in err and "stages-scratch-stage1" in err and "full" in err


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """textcot, latent from its step 3 and storm from there with Stage I only, at test size,
    on a small suite (a demo's train and test splits)."""
    from stormvl.synth import build_suite

    root = tmp_path_factory.mktemp("exp")
    preset = replace(at_test_size(EXPERIMENTS["stages-textcot-stage1"]),
                     methods=("textcot", "latent", "storm"))
    for split, n, seed in (("train", 12, 1000), ("test", 8, 1002)):
        build_suite(root / "data" / split, n, families=list(preset.families), split=split,
                    difficulty=preset.difficulty, frames=preset.frames, size=preset.size, seed=seed,
                    workers=1, progress=False, option_order=preset.option_order)
    runs, _ = train_all(preset, root / "data" / "train" / "manifest.jsonl", root / "runs", print)
    return preset, root, runs


def test_stage1_only_storm_trains_its_whole_budget_in_stage1_and_resumes(tiny_runs, capsys):
    from stormvl.diagnostics.alignment import checkpoint_stage
    from stormvl.training.checkpoint import PROJECTOR

    preset, root, runs = tiny_runs
    storm = runs["storm", 0]
    assert [s for s, _ in storm] == [4, 5, 6]  # textcot's 3 steps, then 3 of Stage I
    assert all(checkpoint_stage(p) == 1 for _, p in storm) and (storm[-1][1] / PROJECTOR).is_file()
    assert not (root / "runs" / "storm" / "seed0" / "stage2").exists()
    again, _ = train_all(preset, root / "data" / "train" / "manifest.jsonl", root / "runs", print)
    assert again == runs
    assert "storm stage 1 seed 0: found done" in capsys.readouterr().out


def test_textcots_states_are_the_ones_its_decoding_read(tiny_runs):
    """The teacher-forced pass gives each reply token the state greedy decoding had: the
    states the engine fed its LM head, recorded as it decoded."""
    from stormvl import evaluation
    from stormvl.diagnostics.retrieval import reply_states
    from stormvl.diagnostics.run import prepare_items
    from stormvl.tasks import load_benchmark

    _, root, runs = tiny_runs
    model = evaluation.load_model(runs["textcot", 0][-1][1])
    runner = evaluation.Runner(model, evaluation.EvalSettings(batch_size=4, max_new_tokens=12))
    items = load_benchmark("synth", root / "data" / "test")[:4]
    bb, seen = model.backbone, []
    head = bb.lm_head
    bb.lm_head = lambda h: seen.append(h.detach().float().clone()) or head(h)
    try:
        got = reply_states(runner, prepare_items(runner, items), batch_size=4)
    finally:
        del bb.lm_head
    assert len(got) == 4 and any(ids for ids, _, _ in got)
    for r, (ids, _, states) in enumerate(got):
        assert states.shape == (len(ids) + 1, bb.hidden_size)
        for t in range(len(ids)):  # decode step t's LM-head input chose token t
            assert torch.allclose(states[t], seen[t][r], atol=1e-4), (r, t)


def test_retrieval_rows_for_latents_text_and_random_are_kept_per_seed(tiny_runs, capsys):
    from stormvl.diagnostics.metrics import retrieval_chance
    from stormvl.diagnostics.retrieval import seed_retrieval

    preset, root, runs = tiny_runs
    out = root / "diag" / "retrieval"
    rows = seed_retrieval(runs, root / "data" / "test", out, n=8, batch_size=8)
    assert set(rows) == {("latent", 0), ("storm", 0)}
    for r in rows.values():
        assert r["n"] == 8 and r["k"] == preset.k and r["chance"] == retrieval_chance(8)
        for row in (r["latents"], r["textcot"], r["random"]):
            for way in ("direct", "probe"):  # the tiny model's width is the targets'
                assert set(row[way]) == {"hit@1", "hit@5", "mrr"}
                assert 0 <= row[way]["hit@1"] <= row[way]["hit@5"] <= 1
                assert 1 / 8 <= row[way]["mrr"] <= 1  # every rank is at most 8
    assert rows["latent", 0]["textcot"] == rows["storm", 0]["textcot"]
    saved = json.loads((out / "seed0.json").read_text())
    assert set(saved["rows"]) == {"latent", "storm", "textcot", "random"}
    capsys.readouterr()
    assert seed_retrieval(runs, root / "data" / "test", out, n=8, batch_size=8) == rows
    assert "retrieval seed 0 (latent, storm, textcot): found done" in capsys.readouterr().out
    # without textcot's run the seed is computed again, with no text row
    again = seed_retrieval({j: c for j, c in runs.items() if j[0] != "textcot"},
                           root / "data" / "test", out, n=8, batch_size=8)
    assert again["storm", 0]["textcot"] is None


def test_a_linked_textcot_run_starts_storm_and_counts_for_retrieval(tiny_runs, tmp_path):
    """The time-saver of docs/experiments.md: a folder whose runs/textcot links to another
    folder's trains only storm, from the same start, and still gets its text row."""
    from stormvl.demo.pipeline import _retrieval
    from stormvl.training.checkpoint import read_meta

    preset, root, runs = tiny_runs
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "textcot").symlink_to(root / "runs" / "textcot")
    only = replace(preset, methods=("storm",))
    got, _ = train_all(only, root / "data" / "train" / "manifest.jsonl", tmp_path / "runs", print)
    start = tmp_path / "runs" / "textcot" / "seed0" / "checkpoints" / "step-000003"
    assert [s for s, _ in got["storm", 0]] == [4, 5, 6]
    assert read_meta(got["storm", 0][0][1])["base"] == str(start)
    # the same start and data: the same storm, byte for byte
    weights = [c[-1][1] / "model.safetensors" for c in (got["storm", 0], runs["storm", 0])]
    assert weights[0].read_bytes() == weights[1].read_bytes()
    rows = _retrieval(only, {"test": root / "data" / "test"}, tmp_path, got, print)
    assert set(rows) == {("storm", 0)} and rows["storm", 0]["textcot"] is not None


def test_degraded_thought_videos_differ_from_the_exact_ones_and_train_storm(tmp_path, capsys):
    """thoughts-*: the demo's train split is redrawn through `degrade` (once: a second data
    stage finds it done), and storm's Stage-I targets come from the corrupted videos."""
    import numpy as np

    from stormvl.data.manifest import read_manifest
    from stormvl.data.video import decode_frames
    from stormvl.demo.pipeline import make_data

    preset = replace(at_test_size(EXPERIMENTS["thoughts-strong"]), n_train=6, n_val=2, n_test=2,
                     methods=("storm",), latent_from_textcot=0, internalize_at=())
    data = make_data(preset, tmp_path / "data", print)
    assert data["train"] == tmp_path / "data" / "train-degraded"
    clean = {s.id: s for s in read_manifest(tmp_path / "data" / "train" / "manifest.jsonl")}
    bad = read_manifest(data["train"] / "manifest.jsonl")
    assert [s.id for s in bad] == list(clean)
    for s in bad:
        a = decode_frames(tmp_path / "data" / "train" / clean[s.id].thought_video)[0]
        b = decode_frames(data["train"] / s.thought_video)[0]
        assert s.answer == clean[s.id].answer and s.video != s.thought_video
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 10
    capsys.readouterr()
    assert make_data(preset, tmp_path / "data", print) == data
    assert "train-degraded (noise_sigma=64, shuffle_p=1, wrong_state_p=1): found done" in capsys.readouterr().out
    runs, _ = train_all(preset, data["train"] / "manifest.jsonl", tmp_path / "runs", print)
    assert [s for s, _ in runs["storm", 0]][-1] == preset.steps
