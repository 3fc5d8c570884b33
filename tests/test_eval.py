"""``stormvl eval`` / ``answer`` / the lmms-eval runner on the tiny backbone.

Every benchmark end to end from the fixture layouts; each method's prompt layout (the oracle's
inputs checked against the trainer's own loader); resume after a SIGKILL; refusal of mixed
settings; failed videos counted; each bad input exits 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fixtures_tasks as ft
from stormvl.cli import main
from stormvl.tasks import load_benchmark
from stormvl.tasks.score import Predictions, score
from train_fixtures import make_suite

VIDEO = dict(num_frames=4, min_pixels=28 * 28, max_pixels=56 * 56, max_visual_tokens=64)
WRITERS = {"videomme": ft.write_videomme, "mvbench": ft.write_mvbench,
           "tempcompass": ft.write_tempcompass, "mmvu": ft.write_mmvu, "synth": ft.write_synth}


def save_checkpoint(bb, path: Path, method: str, k: int = 2, **video) -> Path:
    """A checkpoint through the trainer's own save path (weights + stormvl.json)."""
    from stormvl.backbones import VideoSettings
    from stormvl.training.build import Built, run_meta, save_model
    from stormvl.training.config import MethodConfig, TrainConfig, VideoConfig

    cfg = TrainConfig(method=MethodConfig(name=method, k=k, oracle_frames=2),
                      video=VideoConfig(**{**VIDEO, **video}))
    bb.video = VideoSettings(min_pixels=cfg.video.min_pixels, max_pixels=cfg.video.max_pixels)
    save_model(Built(bb), path, run_meta(cfg, 0))
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    from stormvl.backbones.tiny import build_tiny

    root = tmp_path_factory.mktemp("ckpt")
    bb = build_tiny("qwen2_5_vl", "tiny", seed=0)
    out = {m: save_checkpoint(bb, root / m, m) for m in ("direct", "latent", "textcot")}
    # a budget that binds (8 + 4 tokens wanted at 64x64): the planner must lower pixel bounds
    out["oracle"] = save_checkpoint(bb, root / "oracle", "oracle", max_visual_tokens=6)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    out = {name: write(root / name) for name, write in WRITERS.items()}
    suite = make_suite(root / "suite", n=4, size=64)  # with thought videos, for the oracle
    shutil.copyfile(suite, suite.parent / "manifest.jsonl")
    out["suite"] = suite.parent
    return out


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def evaluate(ckpt: Path, bench: str, data_dir: Path, out: Path, *extra) -> int:
    return run_cli("eval", "--model", ckpt, "--benchmark", bench, "--data", data_dir, "--out", out,
                   "--no-progress", "--device", "cpu", *extra)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bench", list(WRITERS))
def test_eval_every_benchmark(tmp_path, ckpts, data, bench, capsys):
    extra = ["--subtitles"] if bench == "videomme" else []
    out = tmp_path / "out"
    assert evaluate(ckpts["latent"], bench, data[bench], out, "--max-new-tokens", "3", *extra) == 0
    assert "overall" in capsys.readouterr().out
    items = load_benchmark(bench, data[bench], subtitles=bool(extra))
    rows = read_rows(out / "predictions.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(it.id for it in items)
    for r in rows:
        assert set(r["latency_s"]) == {"prefill", "rollout", "decode"}
        assert r["latent_steps"] == 2 and 1 <= r["generated_tokens"] <= 3
        assert len(r["frame_indices"]) == 4
    res = json.loads((out / "results.json").read_text())
    # the stored number is the benchmark's own scorer applied to the stored replies
    again = score(bench, items, Predictions({r["id"]: r["response"] for r in rows}), ())
    assert (res["overall"], res["n_items"], res["missing"]) == (again["overall"], len(items), 0)
    rep = res["reproducibility"]
    assert rep["video"]["num_frames"] == 4 and rep["generation"]["max_new_tokens"] == 3
    assert rep["backbone"] == "qwen2_5_vl" and len(rep["checkpoint_sha"]) == 16
    assert set(rep["packages"]) >= {"stormvl", "torch", "transformers"}
    assert "<|latent_start|>" in rep["chat_template_example"] and rep["subtitles"] == bool(extra)
    assert res["cost"]["latent_steps"] == 2 and res["cost"]["mean_latency_s"]["total"] > 0
    assert (out / "results.md").read_text().startswith(f"# {bench}: latent")
    if bench == "mvbench":  # start / end bounds honoured: 2 s .. 6 s at 4 fps
        bounded = [r for r in rows if r["id"].startswith("action_sequence/")]
        assert all(8 <= i <= 24 for r in bounded for i in r["frame_indices"])


def test_method_layouts(tmp_path, ckpts, data):
    synth = data["synth"]
    assert evaluate(ckpts["direct"], "synth", synth, tmp_path / "d", "--max-new-tokens", "2") == 0
    d = read_rows(tmp_path / "d" / "predictions.jsonl")
    assert all(r["latent_steps"] == 0 for r in d)
    d_res = json.loads((tmp_path / "d" / "results.json").read_text())
    assert "<|latent" not in d_res["reproducibility"]["chat_template_example"]
    assert evaluate(ckpts["latent"], "synth", synth, tmp_path / "k5", "--k", "5",
                    "--max-new-tokens", "2") == 0
    assert all(r["latent_steps"] == 5 for r in read_rows(tmp_path / "k5" / "predictions.jsonl"))
    assert evaluate(ckpts["textcot"], "synth", synth, tmp_path / "t", "--limit", "1") == 0
    t_res = json.loads((tmp_path / "t" / "results.json").read_text())
    assert t_res["reproducibility"]["generation"]["max_new_tokens"] == 256  # reasoning budget
    assert t_res["n_items"] == 1
    plain = tmp_path / "plain"  # a Qwen-VL folder not trained by stormvl: direct, 16 frames
    shutil.copytree(ckpts["direct"], plain)
    (plain / "stormvl.json").unlink()
    assert evaluate(plain, "synth", synth, tmp_path / "p", "--limit", "1",
                    "--max-new-tokens", "2") == 0
    p_res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert (p_res["reproducibility"]["method"], p_res["reproducibility"]["video"]["num_frames"]) \
        == ("direct", 16)


def test_textcot_scores_the_final_answer():
    from stormvl.evaluation.model import LoadedModel, answer_part

    reply = "A ball moves. Cup A is empty.\nThe answer is C."
    assert answer_part(True, reply) == "C."
    assert answer_part(True, "no final line, B") == "no final line, B"
    assert answer_part(False, reply) == reply

    def writes(method, step, at):
        return LoadedModel(None, method, 2, None, 0, "p", {"step": step, "internalize_at": at}).writes_rationale

    assert writes("textcot", 5, []) and not writes("latent", 5, []) and not writes("direct", 5, [])
    # a latent checkpoint writes the chain's tail until its curriculum reaches the answer alone
    assert writes("latent", 300, [100, 300]) and not writes("latent", 301, [100, 300])


def test_oracle_sees_what_training_saw(tmp_path, ckpts, data):
    """Eval's oracle inputs == the trainer's loader on the same sample (frames, pixels, layout)."""
    from stormvl.backbones import Prompt
    from stormvl.data.manifest import read_manifest
    from stormvl.evaluation import EvalSettings, Runner, load_model
    from stormvl.latent import format_question
    from stormvl.training.data import VideoQADataset
    from stormvl.training.loop import _preprocess
    from stormvl.training.video_settings import backbone_counter

    suite = data["suite"]
    assert evaluate(ckpts["oracle"], "synth", suite, tmp_path / "o", "--max-new-tokens", "2") == 0
    rows = read_rows(tmp_path / "o" / "predictions.jsonl")
    assert len(rows) == 4 and all(len(r["thought_frame_indices"]) == 2 for r in rows)

    runner = Runner(load_model(ckpts["oracle"], "cpu"), EvalSettings())
    bb = runner.model.backbone
    samples = read_manifest(suite / "manifest.jsonl")
    ds = VideoQADataset(samples, suite, runner.video, backbone_counter(bb), bb.temporal_patch,
                        oracle_frames=runner.model.oracle_frames)
    x = ds.load(1)
    trained = bb.encode(Prompt(
        videos=[_preprocess(bb, x.frames, x.timestamps, x.plan),
                _preprocess(bb, x.thought_frames, x.thought_timestamps, x.thought_plan)],
        text=format_question(x.sample.question, x.sample.options), k=0))
    item = load_benchmark("synth", suite)[1]
    got = runner.prepare(item).encoded
    assert x.plan.max_pixels < runner.video.max_pixels  # the budget did bind
    assert got.input_ids == trained.input_ids
    for a, b in zip(got.videos, trained.videos, strict=True):
        torch.testing.assert_close(a.pixel_values, b.pixel_values, rtol=0, atol=0)
        assert a.grid_thw.tolist() == b.grid_thw.tolist()
    # through a decoded-clip cache (EvalSettings.clip_cache): the same inputs, then no decoding
    import stormvl.data.clip_cache as cc

    cached = Runner(runner.model, EvalSettings(clip_cache=str(tmp_path / "clips")))
    first = cached.prepare(item)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cc.OpenVideo, "read", lambda *a, **k: pytest.fail("decoded again"))
        mp.setattr(cc, "OpenVideo", lambda *a, **k: pytest.fail("opened again"))
        again = cached.prepare(item)
    row = next(r for r in rows if r["id"] == item.id)
    for p in (first, again):
        assert p.encoded.input_ids == got.input_ids and p.thought_indices == row["thought_frame_indices"]
        for a, b in zip(p.encoded.videos, got.videos, strict=True):
            torch.testing.assert_close(a.pixel_values, b.pixel_values, rtol=0, atol=0)
    # no thought videos in the benchmark: refused before any work
    assert evaluate(ckpts["oracle"], "synth", data["synth"], tmp_path / "o2") == 2


def test_failed_video_is_recorded_and_counted(tmp_path, ckpts, data, capsys):
    d, out = tmp_path / "synth", tmp_path / "o"
    shutil.copytree(data["synth"], d)
    good = (d / "videos" / "s2.mp4").read_bytes()
    (d / "videos" / "s2.mp4").write_bytes(b"not a video at all")
    args = ("--max-new-tokens", "2")
    # 1 of 4 failed: over the default 5%, so no result, one line, the answers kept
    assert evaluate(ckpts["direct"], "synth", d, out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: 1 of 4 items failed to load, "
                                               "more than the 5% allowed")
    assert "first: s2: " in err[0] and "s2.mp4" in err[0]
    assert not (out / "results.json").exists()
    answered = (out / "predictions.jsonl").read_text()
    assert len(answered.splitlines()) == 3
    # allowed: scored, the failure counted as missing (it was retried, and failed again)
    assert evaluate(ckpts["direct"], "synth", d, out, *args, "--max-failed-share", "0.25") == 0
    assert "1 videos failed to load" in capsys.readouterr().out
    fails = read_rows(out / "failed.jsonl")
    assert [f["id"] for f in fails] == ["s2"] and "s2.mp4" in fails[0]["error"]
    res = json.loads((out / "results.json").read_text())
    assert (res["failed"], res["missing"], res["missing_ids"]) == (1, 1, ["s2"])
    assert (out / "predictions.jsonl").read_text() == answered  # nothing answered twice
    # the video fixed: the re-run answers just that item
    (d / "videos" / "s2.mp4").write_bytes(good)
    assert evaluate(ckpts["direct"], "synth", d, out, *args) == 0
    rows = read_rows(out / "predictions.jsonl")
    assert (out / "predictions.jsonl").read_text().startswith(answered)
    assert [r["id"] for r in rows[3:]] == ["s2"] and read_rows(out / "failed.jsonl") == []
    res = json.loads((out / "results.json").read_text())
    assert (res["failed"], res["missing"]) == (0, 0)
    assert evaluate(ckpts["direct"], "synth", d, out, "--max-failed-share", "2") == 2
    assert "--max-failed-share 2.0: must be between 0 and 1" in capsys.readouterr().err


def test_run_where_every_item_failed_exits_2_then_resumes(tmp_path, ckpts, capsys):
    """No media at all (e.g. a layout the reader does not know) is a failed run, not 0.0."""
    d, out = ft.write_synth(tmp_path / "synth", videos=False), tmp_path / "o"
    args = ("--max-new-tokens", "2")
    assert evaluate(ckpts["direct"], "synth", d, out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: all 4 items failed to load; "
                                               "first: s0: ")
    assert len(read_rows(out / "failed.jsonl")) == 4 and not (out / "results.json").exists()
    ft.write_synth(d)  # the media arrive: the same command finishes the run
    assert evaluate(ckpts["direct"], "synth", d, out, *args) == 0
    assert sorted(r["id"] for r in read_rows(out / "predictions.jsonl")) == ["s0", "s1", "s2",
                                                                            "s3"]
    assert json.loads((out / "results.json").read_text())["failed"] == 0


def test_console_counts_failures_beyond_the_first_five(tmp_path, ckpts, capsys):
    tasks = ["action_antonym", "object_shuffle", "moving_count", "fine_grained_pose"]
    d = ft.write_mvbench(tmp_path / "mvb", tasks=tasks)
    for f in sorted((d / "video").rglob("*.mp4"))[2:]:  # 6 of the 8 videos gone
        f.unlink()
    out = tmp_path / "o"
    assert evaluate(ckpts["direct"], "mvbench", d, out, "--tasks", ",".join(tasks),
                    "--max-new-tokens", "2", "--max-failed-share", "0.8") == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    at = lines.index(f"6 videos failed to load, counted as missing (see {out / 'failed.jsonl'}):")
    shown = lines[at + 1: at + 6]
    assert all(line.startswith("  ") and ".mp4" in line for line in shown), shown
    assert lines[at + 6] == "  ... and 1 more"
    assert json.loads((out / "results.json").read_text())["n_items"] == 8


def test_empty_manifest_refused(tmp_path, ckpts, capsys):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "manifest.jsonl").write_text("")
    assert evaluate(ckpts["direct"], "synth", d, tmp_path / "o") == 2
    assert f"error: {d}: the synth copy holds no questions" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_mvbench_as_lmms_eval_downloads_it(tmp_path, ckpts, capsys):
    """The dataset's `video` branch, only two of its tasks copied: --tasks runs them."""
    tasks = "action_sequence,episodic_reasoning"
    d = ft.write_mvbench(tmp_path / "mvb", layout="video", tasks=tasks.split(","))
    out = tmp_path / "o"
    assert evaluate(ckpts["latent"], "mvbench", d, out, "--max-new-tokens", "2") == 2
    assert "--tasks" in capsys.readouterr().err  # a partial copy needs its tasks named
    assert evaluate(ckpts["latent"], "mvbench", d, out, "--tasks", tasks,
                    "--max-new-tokens", "2") == 0
    rows = {r["id"]: r for r in read_rows(out / "predictions.jsonl")}
    assert sorted(rows) == ["action_sequence/0", "action_sequence/1", "episodic_reasoning/0",
                            "episodic_reasoning/1"]
    # the pre-cut 16-frame clip is sampled whole (its bounds are not applied again)
    assert min(rows["action_sequence/0"]["frame_indices"]) < 4
    assert max(rows["action_sequence/0"]["frame_indices"]) > 11
    res = json.loads((out / "results.json").read_text())
    assert (res["n_items"], res["failed"]) == (4, 0)


def test_resume_after_kill_matches_uninterrupted(tmp_path, ckpts, data):
    args = ["--model", ckpts["latent"], "--benchmark", "mvbench", "--data", data["mvbench"],
            "--batch-size", "1", "--max-new-tokens", "8", "--no-progress", "--device", "cpu"]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "stormvl", "eval", *map(str, args), "--out",
                             str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pred = out / "predictions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if pred.exists() and len(pred.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(read_rows(pred))
    assert 3 <= n_before < 40 and not (out / "results.json").exists()
    assert run_cli("eval", *args, "--out", out) == 0
    assert run_cli("eval", *args, "--out", tmp_path / "whole") == 0
    rows = read_rows(pred)
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    killed = json.loads((out / "results.json").read_text())
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert killed["items"] == whole["items"] and killed["overall"] == whole["overall"]
    assert (killed["reproducibility"]["frame_indices_sha256"]
            == whole["reproducibility"]["frame_indices_sha256"])
    by_id = {r["id"]: r["response"] for r in read_rows(tmp_path / "whole" / "predictions.jsonl")}
    assert {r["id"]: r["response"] for r in rows} == by_id


def test_other_settings_into_same_out_refused(tmp_path, ckpts, data, capsys):
    out = tmp_path / "o"
    args = ("--max-new-tokens", "2", "--limit", "2")
    assert evaluate(ckpts["latent"], "synth", data["synth"], out, *args) == 0
    assert evaluate(ckpts["latent"], "synth", data["synth"], out, "--frames", "2", *args) == 2
    err = capsys.readouterr().err
    assert "other settings (video" in err and "warning: video sampling overridden" in err
    assert evaluate(ckpts["latent"], "synth", data["synth"], out, "--k", "3", *args) == 2
    # a larger --limit extends the same run
    assert evaluate(ckpts["latent"], "synth", data["synth"], out, "--max-new-tokens", "2") == 0
    assert len(read_rows(out / "predictions.jsonl")) == 4


def test_second_evaluation_into_a_busy_out_refused(tmp_path, ckpts, data, capsys):
    from stormvl.io import exclusive_folder

    out = tmp_path / "o"
    with exclusive_folder(out, "a test"):  # as if another evaluation were writing there
        assert evaluate(ckpts["latent"], "synth", data["synth"], out, "--limit", "2") == 2
    assert f"{out}: another process is running an evaluation here" in capsys.readouterr().err
    assert not (out / "predictions.jsonl").exists()
    assert evaluate(ckpts["latent"], "synth", data["synth"], out, "--max-new-tokens", "2", "--limit", "2") == 0


def test_bad_inputs_exit_2(tmp_path, ckpts, data, capsys):
    synth = data["synth"]
    assert evaluate(tmp_path / "nope", "synth", synth, tmp_path / "o") == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
    odd = tmp_path / "odd"
    shutil.copytree(ckpts["direct"], odd)
    meta = json.loads((odd / "stormvl.json").read_text())
    (odd / "stormvl.json").write_text(json.dumps({**meta, "method": "telepathy"}))
    assert evaluate(odd, "synth", synth, tmp_path / "o") == 2
    assert "field 'method' 'telepathy'" in capsys.readouterr().err
    assert evaluate(ckpts["direct"], "synth", synth, tmp_path / "o", "--k", "4") == 2
    assert "direct checkpoint, which has no latent steps" in capsys.readouterr().err
    ask = ["answer", "--model", ckpts["latent"], "--question", "Which colour?", "--device", "cpu"]
    assert run_cli(*ask, "--video", tmp_path / "missing.mp4") == 2
    assert "missing.mp4: file not found" in capsys.readouterr().err
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 64)
    assert run_cli(*ask, "--video", junk) == 2
    assert "junk.mp4: cannot open video" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_answer_and_lmms_runner_share_the_eval_path(tmp_path, ckpts, data, capsys):
    from stormvl.evaluation import load_runner

    video = data["synth"] / "videos" / "s0.mp4"
    code = run_cli("answer", "--model", ckpts["latent"], "--video", video, "--question", "Where?",
                   "--option", "cup 1", "--option", "cup 2", "--device", "cpu")
    assert code == 0
    err = capsys.readouterr().err
    assert "latent rollout" in err and "K = 2" in err

    out = tmp_path / "o"
    assert evaluate(ckpts["latent"], "synth", data["synth"], out, "--max-new-tokens", "4",
                    "--batch-size", "1") == 0
    want = {r["id"]: r["response"] for r in read_rows(out / "predictions.jsonl")}
    runner = load_runner(str(ckpts["latent"]), num_frames=None, fps=None, k=None, device="cpu")
    items = load_benchmark("synth", data["synth"])
    for it in items[:2]:
        got = runner.generate([([str(it.video)], it.prompt)], max_new_tokens=4, do_sample=False,
                              temperature=0.0)
        assert got == [want[it.id]]
    with pytest.raises(ValueError, match="unknown stormvl model_args"):
        load_runner(str(ckpts["latent"]), flux_capacitor=1)
