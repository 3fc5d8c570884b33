"""The demo end to end at test size: every output exists, parses, and agrees."""

import json
import re
import subprocess
import sys
import time
from functools import partial

import pytest

from stormvl.cli import main
from stormvl.report.demo_report import _est, _f


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--preset", "test", "--out", str(out)]) == 0
    return out


def test_outputs_exist_and_parse(demo_dir):
    res = json.loads((demo_dir / "results.json").read_text())
    assert res["methods"] == ["direct", "textcot", "latent", "storm", "oracle"]
    assert res["splits"] == ["test", "ood", "ood-size", "ood-tempo"]
    for split in res["splits"]:
        for m in res["methods"]:
            e = res["overall"][split][m]
            assert 0 <= e["lo"] <= e["mean"] <= e["hi"] <= 100 and e["n"] > 0
    chains = set(res["by_chain"]["test"]["storm"])
    assert chains and all(g.split(":")[0] in ("shell_game", "event_order") for g in chains), chains
    assert all(res["by_chain"]["test"]["storm"][g]["n"] > 0 for g in chains)
    assert "By chain length (test" in (demo_dir / "report.md").read_text()
    assert set(res["diagnostics"]) == {"latent", "storm", "storm (end of Stage I)"}
    s1 = res["diagnostics"]["storm (end of Stage I)"]["0"]
    assert "stage1" in s1["checkpoint"] and "stage2" in res["diagnostics"]["storm"]["0"]["checkpoint"]
    assert "| storm (end of Stage I) | 0 |" in (demo_dir / "report.md").read_text()
    assert not (demo_dir / ".stage.json").exists()  # every stage ended: no mark left
    assert res["time"]["interrupted"] == 0
    storm = res["diagnostics"]["storm"]["0"]
    assert {"swap", "zero", "noise"} <= set(storm["interventions"])
    assert len(storm["alignment"]["final_cos_per_step"]) == res["preset"]["k"]
    assert res["goals"] and all(g["met"] in (True, False) for g in res["goals"])
    html = (demo_dir / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert {"accuracy_test.png", "accuracy_ood-size.png", "curves.png"} <= set(images)
    for img in images:
        assert (demo_dir / img).stat().st_size > 1000, img
    # one decoded-clip folder shared by every run, evaluation and diagnostic: each clip of
    # each split decoded once (entries: clips at the trained frame count, and probes)
    clips = list((demo_dir / "data" / "clips").rglob("*.clip"))
    assert len(clips) >= sum(res["preset"][f"n_{s}"] for s in ("train", "val", "test", "ood"))
    # storm's Stage-I targets in one shared cache too (a per-run cache would rebuild them):
    # the training split's, and the test questions' of the alignment diagnostics
    p = res["preset"]
    assert len(list((demo_dir / "data" / "targets").rglob("*.safetensors"))) == \
        p["n_train"] + min(p["diag_n"], p["n_test"])
    assert not list((demo_dir / "runs").rglob("target_cache"))


def test_report_numbers_equal_results(demo_dir):
    res = json.loads((demo_dir / "results.json").read_text())
    md = (demo_dir / "report.md").read_text()
    assert len(res["splits"]) == 4
    for split in res["splits"]:
        section = md.split(f"## Accuracy on {split}")[1].split("## ")[0]
        row = next(line for line in section.splitlines() if line.startswith("| family mean |"))
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        assert cells == [_f(res["macro"][split][m]) for m in res["methods"]]
        row = next(line for line in section.splitlines() if line.startswith("| all questions |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert cells == [str(res["overall"][split]["storm"]["n"])] + [
            _est(res["overall"][split][m]) for m in res["methods"]]
    # wall time: each stage once (one invocation made the folder), the total their sum
    t = res["time"]
    assert list(t["stages_min"]) == ["data", "train", "eval"] and t["invocations"] == 1
    assert abs(t["total_min"] - sum(t["stages_min"].values())) < 0.02 and t["total_min"] > 0
    section = md.split("## Wall time")[1].split("## ")[0]
    assert f"| total | {_f(t['total_min'])} |" in section
    # wall times compare only on one CPU: which one is recorded beside them
    from stormvl.evaluation.model import cpu_description

    assert t["cpu"] == cpu_description() and f"({t['cpu']})" in section
    rep = json.loads((demo_dir / "eval" / "storm" / "seed0" / "test" / "results.json").read_text())
    assert rep["reproducibility"]["cpu"] == t["cpu"]


def test_ood_shifts_hold_the_task_and_change_one_rendering_setting(demo_dir):
    """The shifts are test-level questions (4 cups) drawn at another size or frame count;
    the suite's own ood split holds out the layout (6 cups)."""
    import av

    from stormvl.data.manifest import read_manifest

    def look(split):
        rows = [r for r in read_manifest(demo_dir / "data" / split / "manifest.jsonl")
                if r.family == "shell_game"]
        with av.open(str(demo_dir / "data" / split / rows[0].video)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        cups = {r.question.split(" cups")[0].split()[-1] for r in rows}
        return cups, len(frames), frames[0].shape[:2]

    trained, frames, shape = look("test")
    assert trained <= {"4", "5"} and (frames, shape) == (8, (32, 32))
    assert look("ood")[0] == {"6"}
    cups, *render = look("ood-size")
    assert cups <= trained and render == [8, (42, 42)]
    cups, *render = look("ood-tempo")
    assert cups <= trained and render == [16, (32, 32)]
    res = json.loads((demo_dir / "results.json").read_text())
    rows = [g for g in res["goals"] if g["goal"].startswith("storm's gain over direct holds on")]
    assert [g["goal"].split(" holds on ")[1].split()[0] for g in rows] == res["splits"][1:]
    for g, split in zip(rows, res["splits"][1:], strict=True):
        assert g["value"] == [round(v, 4) for v in res["gains"][split]["storm-direct"]["per_seed"]]
    md = (demo_dir / "report.md").read_text()
    assert "`ood-tempo`: videos with twice the frames" in md.split("## Accuracy on ood-tempo")[1]


def test_the_time_goal_is_checked_against_the_recorded_time(demo_dir):
    from dataclasses import replace

    from stormvl.demo.assemble import goals
    from stormvl.demo.presets import PRESETS

    res = json.loads((demo_dir / "results.json").read_text())
    assert PRESETS["quick"].minutes == 10
    assert not any("min of wall" in g["goal"] for g in res["goals"])  # the test preset has none
    total = res["time"]["total_min"]
    for minutes, met in ((total * 2, True), (total / 2, False)):
        row = [g for g in goals(res, replace(PRESETS["test"], minutes=minutes)) if "min of wall" in g["goal"]]
        assert len(row) == 1 and row[0]["met"] is met and row[0]["value"] == total


def test_a_failed_stage_is_counted_by_the_next_invocation_and_an_ended_one_once(tmp_path):
    from stormvl.data.manifest import read_jsonl_tolerant
    from stormvl.demo.presets import PRESETS
    from stormvl.demo.timing import RUNNING, TIMING, recover_interrupted, time_spent, timed

    with timed(tmp_path, "data", PRESETS["test"], heartbeat_s=60):
        pass
    assert not (tmp_path / RUNNING).exists()
    with pytest.raises(KeyboardInterrupt), timed(tmp_path, "train", PRESETS["test"], heartbeat_s=60):
        time.sleep(0.3)
        raise KeyboardInterrupt
    rows = read_jsonl_tolerant(tmp_path / TIMING)
    assert [r["stage"] for r in rows] == ["data"] and not rows[0].get("interrupted")
    said = []
    recover_interrupted(tmp_path, said.append)
    recover_interrupted(tmp_path, said.append)  # once only
    rows = read_jsonl_tolerant(tmp_path / TIMING)
    # the heartbeat is 60 s: only the mark written on the way out knows the 0.3 s
    assert [r["stage"] for r in rows] == ["data", "train"] and rows[1]["interrupted"] is True
    assert 0.3 <= rows[1]["s"] < 30 and len(said) == 1 and "train stage was interrupted" in said[0]
    t = time_spent(tmp_path)
    assert t["interrupted"] == 1 and t["invocations"] == 1 and t["stages_min"]["train"] > 0
    (tmp_path / RUNNING).write_text('{"stage": "eval", "started": ')  # damaged: said, dropped
    recover_interrupted(tmp_path, said.append)
    assert "unreadable" in said[-1] and not (tmp_path / RUNNING).exists()
    assert len(read_jsonl_tolerant(tmp_path / TIMING)) == 2


def test_a_stage_killed_by_sigkill_counts_up_to_its_last_heartbeat(tmp_path):
    """Nothing runs in a process killed by SIGKILL: the heartbeat mark is all that is left."""
    from stormvl.data.manifest import read_jsonl_tolerant
    from stormvl.demo.timing import RUNNING, TIMING, recover_interrupted

    script = ("import time; from pathlib import Path; from stormvl.demo.timing import timed; "
              "from stormvl.demo.presets import PRESETS\n"
              f"with timed(Path({str(tmp_path)!r}), 'train', PRESETS['test'], heartbeat_s=0.1):\n"
              "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    mark, lived, deadline = tmp_path / RUNNING, 0.0, time.time() + 60
    while lived < 1.0 and time.time() < deadline and proc.poll() is None:
        if mark.is_file():
            m = json.loads(mark.read_text())  # written atomically
            lived = m["alive"] - m["started"]
        time.sleep(0.05)
    t_kill = time.time()
    proc.kill()
    proc.wait()
    assert lived >= 1.0 and not (tmp_path / TIMING).exists()
    recover_interrupted(tmp_path, lambda line: None)
    (row,) = read_jsonl_tolerant(tmp_path / TIMING)
    assert row["stage"] == "train" and row["interrupted"] is True
    assert 1.0 <= row["s"] <= t_kill - m["started"] + 0.5


def test_rerun_resumes_without_retraining(demo_dir, capsys):
    """A resumed demo says what it found done, stage by stage, and does nothing again."""
    ckpts = sorted(demo_dir.glob("runs/*/seed0/**/checkpoints/step-*/trainer_state.pt"))
    before = {p: p.stat().st_mtime for p in ckpts}
    capsys.readouterr()
    assert main(["demo", "--preset", "test", "--out", str(demo_dir)]) == 0
    out = capsys.readouterr().out
    assert {p: p.stat().st_mtime for p in ckpts} == before
    log = [line for line in out.splitlines() if line.startswith("[")]
    assert "steps ->" not in out  # no line that looks like training
    for line in ("[data] test: 16 questions: found done", "[train] storm stage 2 seed 0: found done",
                 "[eval] storm seed 0: val curve, ood, ood-size, ood-tempo: found done",
                 "[diagnostics] storm (end of Stage I) seed 0: found done",
                 "[test] oracle seed 0: found done"):
        assert line in log, line
    assert all(line.endswith(": found done") for line in log), log
    # each training stage once (the scoring task lists a run's checkpoints silently)
    assert len([line for line in log if line.startswith("[train]")]) == 6
    # and it ends with the verdict: the table with chance, the gains, the latents, the time
    tail = out.split("[test] oracle seed 0: found done")[1]
    assert "chance 25.0%" in tail and "storm against direct:" in tail
    assert "storm's latents used" in tail and "wall time" in tail
    assert tail.strip().splitlines()[-1].startswith(f"page: {demo_dir / 'index.html'}")


def test_parallel_is_a_speed_setting_a_folder_resumes_with(demo_dir):
    ckpts = sorted(demo_dir.glob("runs/*/seed0/**/checkpoints/step-*/trainer_state.pt"))
    before = {p: p.stat().st_mtime for p in ckpts}
    assert main(["demo", "--preset", "test", "--parallel", "2", "--out", str(demo_dir)]) == 0
    assert {p: p.stat().st_mtime for p in ckpts} == before
    assert main(["demo", "--preset", "test", "--parallel", "0", "--out", str(demo_dir)]) == 2


def test_parallel_training_writes_the_serial_layout(demo_dir, tmp_path):
    """Two runs trained side by side in spawned processes end where serial runs end; each
    with a decode worker of its own (the quick preset's setting)."""
    from dataclasses import replace

    from stormvl.demo.pipeline import train_all
    from stormvl.demo.presets import PRESETS

    preset = replace(PRESETS["test"], methods=("direct", "storm"), steps=2, parallel=2,
                     data_workers=1)
    runs, _ = train_all(preset, demo_dir / "data" / "train" / "manifest.jsonl", tmp_path, print)
    assert set(runs) == {("direct", 0), ("storm", 0)}
    for (method, _), ckpts in runs.items():
        assert ckpts[-1][0] == 2 and (ckpts[-1][1] / "trainer_state.pt").is_file()
        assert ckpts[-1][1].is_relative_to(tmp_path / method / "seed0")
    assert [s for s, _ in runs["storm", 0]] == [1, 2]  # Stage I step 1, Stage II step 1 -> 2


def test_latency_is_measured_alone_on_one_thread_the_rest_in_workers(demo_dir, tmp_path, capsys):
    """The test split (latency) is scored in the demo's process on one thread; val curves,
    ood splits and diagnostics may run in worker processes and land where serial ones do."""
    import shutil

    res = json.loads((demo_dir / "results.json").read_text())
    for split in res["splits"]:
        rep = json.loads((demo_dir / "eval" / "storm" / "seed0" / split / "results.json").read_text())
        assert rep["reproducibility"]["torch_threads"] == 1 or split != "test"
    folder = tmp_path / "copy"
    shutil.copytree(demo_dir, folder)
    gone = [folder / "eval" / "storm" / "seed0" / "ood-tempo", folder / "curves" / "direct",
            folder / "diag" / "storm" / "seed0.json", folder / "eval" / "direct" / "seed0" / "test"]
    for p in gone:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    capsys.readouterr()
    assert main(["demo", "--preset", "test", "--parallel", "2", "--out", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "[train] 10 jobs, 2 at a time, 1 thread(s) each" in out  # 5 runs' training and scoring
    # each finished task is counted as it ends (a long full run shows where it is)
    done = [line for line in out.splitlines() if re.match(r"\[train\] \d+/10 done: ", line)]
    assert [int(line.split()[1].split("/")[0]) for line in done] == list(range(1, 11))
    name = {line: line.split(": ")[1].rsplit(" (", 1)[0] for line in done}
    assert set(name.values()) == {f"{kind} {m} seed 0" for kind in ("train", "score") for m in res["methods"]}
    # the tasks whose output was all there end at once and are no measure of a task: they
    # say so and give no estimate until a task that did work has ended
    found = {name[line] for line in done if "(found done" in line}
    assert found == {f"train {m} seed 0" for m in res["methods"]} | {
        f"score {m} seed 0" for m in ("textcot", "latent", "oracle")}
    worked = [i for i, line in enumerate(done) if name[line] not in found]
    assert all(re.search(r"\(\d+\.\d min[;)]", done[i]) for i in worked)
    assert all(" left)" not in line for line in done[: worked[0]])
    assert all(line.endswith(" min left)") for line in done[worked[0]:-1])
    assert done[-1].endswith(" min)") or done[-1].endswith("(found done)")
    assert all(p.exists() for p in gone)
    again = json.loads((folder / "results.json").read_text())
    assert again["splits"] == res["splits"]
    for split in res["splits"]:  # one seed of tiny barely-trained models: accuracy, not ties
        assert set(again["overall"][split]) == set(res["overall"][split])
    direct = json.loads((folder / "eval" / "direct" / "seed0" / "test" / "results.json").read_text())
    assert direct["reproducibility"]["torch_threads"] == 1


def test_other_preset_in_same_folder_is_refused(demo_dir):
    assert main(["demo", "--preset", "quick", "--out", str(demo_dir)]) == 2
    assert main(["demo", "--preset", "test", "--bottleneck", "--out", str(demo_dir)]) == 2


def test_data_from_another_generator_version_is_refused(demo_dir, tmp_path, capsys):
    import shutil

    shutil.copytree(demo_dir / "data" / "train", tmp_path / "data" / "train")
    args = json.loads((tmp_path / "data" / "train" / "synth.json").read_text())
    (tmp_path / "data" / "train" / "synth.json").write_text(json.dumps({**args, "version": 1}))
    manifest = (tmp_path / "data" / "train" / "manifest.jsonl").read_text()
    assert main(["demo", "--preset", "test", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data' / 'train'}: holds a suite this demo cannot extend (differs in: version)" in err
    assert (tmp_path / "data" / "train" / "manifest.jsonl").read_text() == manifest  # untouched
    assert not (tmp_path / "runs").exists() and not (tmp_path / "demo.json").exists()


def test_bottleneck_option_overrides_the_preset(monkeypatch, tmp_path):
    import stormvl.demo.pipeline as pipeline
    from stormvl.errors import UserError

    seen = []

    def fake_run_demo(preset, out, log):
        seen.append(preset.bottleneck)
        raise UserError("stop here")

    monkeypatch.setattr(pipeline, "run_demo", fake_run_demo)
    for args, want in (([], True), (["--no-bottleneck"], False), (["--bottleneck"], True)):
        assert main(["demo", "--preset", "full", "--out", str(tmp_path), *args]) == 2
        assert seen.pop() is want, args
    from stormvl.demo.presets import PRESETS

    for args, want in (([], PRESETS["quick"].bottleneck), (["--no-bottleneck"], False)):
        assert main(["demo", "--preset", "quick", "--out", str(tmp_path), *args]) == 2
        assert seen.pop() is want, args


def test_a_folder_from_before_a_new_setting_still_resumes(demo_dir, tmp_path):
    from dataclasses import replace

    from stormvl.demo.pipeline import _check_preset
    from stormvl.demo.presets import PRESETS
    from stormvl.errors import UserError

    old = json.loads((demo_dir / "demo.json").read_text())
    del old["bottleneck"]  # made before the setting existed: it had the default, off
    for want, ok in ((replace(PRESETS["test"], bottleneck=True), False), (PRESETS["test"], True)):
        (tmp_path / "demo.json").write_text(json.dumps(old))
        if ok:
            _check_preset(tmp_path, want)
        else:
            with pytest.raises(UserError, match=r"other settings \(bottleneck\)"):
                _check_preset(tmp_path, want)


def test_a_subset_of_methods_reports_without_retraining(demo_dir, tmp_path, capsys):
    """Seeds and methods set which runs a folder reports on, not what any run holds."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(demo_dir, folder)
    capsys.readouterr()
    assert main(["demo", "--preset", "test", "--methods", "storm,direct", "--out", str(folder)]) == 0
    assert "steps ->" not in capsys.readouterr().out
    res = json.loads((folder / "results.json").read_text())
    assert res["methods"] == ["direct", "storm"]
    assert set(res["diagnostics"]) == {"storm", "storm (end of Stage I)"}
    assert set(res["gains"]["test"]) == {"storm-direct"}
    header = next(line for line in (folder / "report.md").read_text().splitlines()
                  if line.startswith("| family |"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["family", "questions", "direct", "storm"]
    # without storm no goal applies, and the report says so instead of an empty table
    assert main(["demo", "--preset", "test", "--methods", "textcot,oracle", "--out", str(folder)]) == 0
    assert "None applies to these methods" in (folder / "report.md").read_text()


def test_the_oracles_render_cost_is_measured_once(demo_dir, tmp_path, monkeypatch):
    """A finished demo run again must show the same cost table: the renderer is timed once."""
    import stormvl.synth
    from stormvl.demo.assemble import thought_video_cost
    from stormvl.errors import UserError

    kept = json.loads((demo_dir / "eval" / "thought_video_cost.json").read_text())
    res = json.loads((demo_dir / "results.json").read_text())
    assert res["cost"]["oracle"]["thought_video_s"] == kept["seconds_per_video"] > 0
    assert kept["videos"] == 16 and kept["cpu"]  # the test preset's 16 test questions (n: 32)
    record = tmp_path / "cost.json"
    first = thought_video_cost(demo_dir / "data" / "test", record)
    monkeypatch.setattr(stormvl.synth, "regenerate", lambda s: pytest.fail("rendered again"))
    assert thought_video_cost(demo_dir / "data" / "test", record) == first
    record.write_text('{"seconds": 1}')
    with pytest.raises(UserError, match="cost.json: field 'seconds_per_video'"):
        thought_video_cost(demo_dir / "data" / "test", record)


def test_the_latent_picture_can_show_a_latent_pointing_at_another_question(demo_dir, monkeypatch):
    """The nearest frame is chosen among other questions' thought videos too: a latent that
    matches another question's frame is shown as such (chosen from its own 8 frames, every
    pair looked right while retrieval was at chance)."""
    import numpy as np
    import torch

    import stormvl.report.render as render
    from stormvl.data.manifest import read_manifest, resolve_media
    from stormvl.data.video import read_clip
    from stormvl.demo.presets import PRESETS
    from stormvl.diagnostics.alignment import _picture

    class Pixels:  # a fixed encoder: each frame's pixels as its feature
        def encode(self, frames, timestamps):
            return torch.as_tensor(np.asarray(frames)).float().reshape(len(frames), 1, -1)

    test = demo_dir / "data" / "test"
    samples = read_manifest(test / "manifest.jsonl")
    first = next(i for i, s in enumerate(samples) if s.family == samples[0].family)
    other = next(i for i, s in enumerate(samples) if i != first and s.family == samples[0].family)

    def frame(i, t):
        clip = read_clip(resolve_media(test, samples[i].thought_video), num_frames=8)
        return torch.as_tensor(np.asarray(clip.frames[t])).float().reshape(-1)

    k = 2
    pred = torch.zeros(len(samples), k, frame(0, 0).numel())
    pred[first, 0] = frame(other, 5)  # step 1 points at another question's frame 6
    pred[first, 1] = frame(first, 7)  # step 2 at its own last frame: right
    seen = {}
    monkeypatch.setattr(render, "image_grid", lambda path, rows, titles, title, col_titles, labels:
                        seen.update(rows=rows, titles=titles, cols=col_titles, labels=labels))
    _picture(demo_dir / "unused.png", samples, test, pred, Pixels(), k, PRESETS["test"],
             torch.zeros(k, pred.shape[-1]))
    assert seen["cols"] == ["step 1: true", "step 1: nearest", "step 2: true", "step 2: nearest"]
    assert seen["titles"][0] == samples[first].family and len(seen["titles"]) == 2  # 2 families
    assert seen["labels"][0] == ["frame 4", "other question", "frame 8", "own, frame 8"]
    assert np.array_equal(seen["rows"][0][1], read_clip(
        resolve_media(test, samples[other].thought_video), num_frames=8).frames[5])


def test_retrieval_rows_reach_the_results(demo_dir):
    """Each latent / storm diagnostics row carries its seed's thought-video retrieval: its
    latents beside textcot's rationale states and random vectors, on the same questions."""
    res = json.loads((demo_dir / "results.json").read_text())
    saved = json.loads((demo_dir / "diag" / "retrieval" / "seed0.json").read_text())
    assert set(saved["rows"]) == {"latent", "storm", "textcot", "random"}
    for row in ("latent", "storm"):
        r = res["diagnostics"][row]["0"]["retrieval"]
        assert r["n"] == res["diagnostics"][row]["0"]["n"] == saved["n"]
        assert r["latents"] == saved["rows"][row] and r["textcot"] == saved["rows"]["textcot"]
        assert r["random"]["probe"]["hit@1"] <= r["random"]["probe"]["hit@5"]
        # the report's Figure-6 table shows the same numbers
        cell = " / ".join(f"{100 * r['latents']['probe'][k]:.1f}" for k in ("hit@1", "hit@5", "mrr"))
        line = next(x for x in (demo_dir / "report.md").read_text().splitlines()
                    if x.startswith(f"| {row} | 0 | {r['n']} |"))
        assert f"| {cell} |" in line


def test_report_command_rebuilds(demo_dir, tmp_path):
    (demo_dir / "report.md").unlink()
    assert main(["report", str(demo_dir)]) == 0
    assert (demo_dir / "report.md").exists()
    assert main(["report", str(tmp_path)]) == 2


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("size", [32, 48, 56, 64, 96])
def test_frame_pixel_bound_never_downscales(family, size):
    """The demo's pixel bound keeps frames at their rounded size (a bound of size**2 once
    shrank 48-pixel frames to 28 x 28: one token per frame pair)."""
    from stormvl.backbones import video_processing as vp
    from stormvl.demo.pipeline import frame_pixel_bound

    factor = 28 if family == "qwen2_5_vl" else 32
    h, w = vp.smart_resize_frame(size, size, factor, 16 * 16, frame_pixel_bound(size))
    want = max(factor, round(size / factor) * factor)
    assert (h, w) == (want, want)


def test_bottleneck_reaches_the_latent_methods_only(tmp_path):
    from dataclasses import replace

    from stormvl.demo.pipeline import train_config
    from stormvl.demo.presets import PRESETS

    preset = replace(PRESETS["test"], bottleneck=True)
    for method in ("direct", "textcot", "latent", "storm", "oracle"):
        cfg = train_config(preset, method, 0, tmp_path / "m.jsonl", tmp_path / method, 4)
        assert cfg.method.bottleneck == (method in ("latent", "storm"))


def test_stage2_learning_rate_scale_reaches_storm_stage2_only(tmp_path):
    from dataclasses import replace

    from stormvl.demo.pipeline import train_config
    from stormvl.demo.presets import PRESETS

    preset = replace(PRESETS["test"], lr=1e-3, stage2_lr_scale=0.1)
    assert train_config(preset, "storm", 0, tmp_path / "m.jsonl", tmp_path / "s1", 4).optim.lr == 1e-3
    stage2 = train_config(preset, "storm", 0, tmp_path / "m.jsonl", tmp_path / "s2", 4, stage=2,
                          stage1=tmp_path / "s1")
    assert stage2.optim.lr == pytest.approx(1e-4)
    assert PRESETS["full"].stage2_lr_scale == 0.1 and PRESETS["quick"].stage2_lr_scale == 0.1


def test_latent_methods_start_from_textcot_and_drop_its_chain(demo_dir, tmp_path, capsys):
    """Coconut's recipe in the demo: latent and storm wait for textcot, start from its step-N
    checkpoint, count its N steps in their budget and run the rationale curriculum."""
    from dataclasses import replace

    from stormvl.demo.pipeline import train_all
    from stormvl.demo.presets import PRESETS
    from stormvl.errors import UserError
    from stormvl.training.checkpoint import read_meta

    manifest = demo_dir / "data" / "train" / "manifest.jsonl"
    preset = replace(PRESETS["test"], methods=("textcot", "latent", "storm"), steps=6, seeds=1,
                     latent_from_textcot=3, internalize_at=(1,), stage1_fraction=0.8)
    with pytest.raises(UserError, match="train textcot first"):
        train_all(replace(preset, methods=("latent",)), manifest, tmp_path, print)
    capsys.readouterr()
    runs, _ = train_all(preset, manifest, tmp_path, print)
    # Stage-I targets come from the demo folder's shared cache, filled by the fixture's storm
    assert "targets (random_projection): 0 built, 24 cached" in capsys.readouterr().out
    start = tmp_path / "textcot" / "seed0" / "checkpoints" / "step-000003"
    assert [s for s, _ in runs["latent", 0]] == [4, 5, 6]  # 3 textcot steps + 3 of its own
    assert [s for s, _ in runs["storm", 0]] == [4, 5, 6]  # Stage I 2 steps, Stage II 1
    meta = read_meta(runs["latent", 0][-1][1])
    assert meta["base"] == str(start) and meta["internalize_at"] == [1] and meta["method"] == "latent"
    assert read_meta(runs["storm", 0][1][1])["internalize_at"] == [1]  # Stage I
    last = read_meta(runs["storm", 0][-1][1])
    assert last["stage"] == 2 and last["internalize_at"] == []

    # a copied tree resumes: its checkpoints find their textcot start relative to themselves
    import shutil

    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.copytree(tmp_path, moved)
    shutil.rmtree(moved / "storm" / "seed0" / "stage2")  # redo Stage II from the copied Stage I
    shutil.rmtree(moved / "latent" / "seed0" / "checkpoints" / "step-000003")  # resume latent
    again, _ = train_all(preset, manifest, moved, print)
    assert [s for s, _ in again["storm", 0]] == [4, 5, 6] and [s for s, _ in again["latent", 0]] == [4, 5, 6]
    assert read_meta(again["storm", 0][-1][1])["base"] == str(moved / "textcot" / "seed0" / "checkpoints" / "step-000003")
    # ... but not a different start
    other = moved / "textcot" / "seed0" / "checkpoints" / "step-000006"
    meta = read_meta(again["storm", 0][1][1])
    from stormvl.training.build import same_base

    assert meta["base"] == str(start)  # recorded as given, before the copy
    assert same_base(meta, again["storm", 0][1][1], str(moved / "textcot" / "seed0" / "checkpoints" / "step-000003"))
    assert not same_base(meta, again["storm", 0][1][1], str(other))


def test_a_preset_whose_latent_runs_could_not_start_is_refused_before_any_training():
    """Found when a 300-step copy of full asked for textcot's step 200, which it never saved
    (checkpoints every 150): the demo failed only after textcot's runs had trained."""
    from dataclasses import replace

    from stormvl.demo.presets import PRESETS
    from stormvl.errors import UserError

    full = PRESETS["full"]
    assert full.checkpoint_every(full.steps) == 500 and full.latent_from_textcot % 500 == 0
    small = dict(steps=300, curve_points=2, internalize_at=(25, 50, 75))
    assert replace(full, latent_from_textcot=150, **small).stage1_steps(150) == 120
    with pytest.raises(UserError, match="latent_from_textcot=200 is not a step textcot saves at"):
        replace(full, latent_from_textcot=200, **small)
    with pytest.raises(UserError, match="leaves no steps"):
        replace(full, latent_from_textcot=300, **small)
    with pytest.raises(UserError, match="internalize_at ends at 130, not below storm's 120"):
        replace(full, latent_from_textcot=150, steps=300, curve_points=2, internalize_at=(25, 130))


def test_runs_start_longest_first_and_wait_only_for_their_own_textcot():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from stormvl.demo.presets import PRESETS
    from stormvl.demo.schedule import job_order, run_jobs

    preset = replace(PRESETS["full"], seeds=2)
    jobs, needs = job_order(preset)
    assert jobs[:2] == [("textcot", 0), ("textcot", 1)] and set(jobs[-4:]) == {
        ("latent", 0), ("storm", 0), ("latent", 1), ("storm", 1)}
    assert needs == {(m, s): ("textcot", s) for m in ("latent", "storm") for s in (0, 1)}
    assert job_order(replace(preset, latent_from_textcot=0))[1] == {}

    log, lock, active = [], threading.Lock(), [0]
    length = {"textcot": 0.08, "oracle": 0.03, "direct": 0.02, "latent": 0.01, "storm": 0.01}

    def fake(job):
        with lock:
            active[0] += 1
            log.append(("start", job, active[0]))
        time.sleep(length[job[0]] * (10 if job == ("textcot", 1) else 1))  # seed 1 is slow
        with lock:
            active[0] -= 1
            log.append(("end", job, active[0]))
        return job[0]

    with ThreadPoolExecutor(4) as pool:  # more threads than allowed: run_jobs must cap it
        done = run_jobs(pool, 2, jobs, needs, fake)
    assert done == {j: j[0] for j in jobs}
    assert max(n for kind, _, n in log if kind == "start") == 2
    at = {(kind, job): i for i, (kind, job, _) in enumerate(log)}
    for job, need in needs.items():
        assert at["start", job] > at["end", need]
    # seed 0's latent and storm did not wait for seed 1's slow textcot
    assert at["start", ("storm", 0)] < at["end", ("textcot", 1)]


def test_scoring_fills_the_workers_only_when_no_training_can_start():
    """A run's scoring (val curve, ood splits, diagnostics) waits for its own training only,
    and starts only when no training run can: it fills gaps, never delays training.

    Seed 1's textcot (and with it seed 1's latent and storm) is held until seed 0's last
    scoring has started, and that scoring until seed 1's latent has started, so the order
    in which the pool is handed tasks is fixed."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from stormvl.demo.presets import PRESETS
    from stormvl.demo.schedule import run_jobs, task_order

    preset = replace(PRESETS["full"], seeds=2)
    tasks, after = task_order(preset, score=True)
    assert task_order(preset, score=False)[0] == [t for t in tasks if t[0] == "train"]
    assert all(after["score", job] == ("train", job) for kind, job in tasks if kind == "score")
    scored_last, latent_started = threading.Event(), threading.Event()

    def fake(task):
        if task == ("train", ("textcot", 1)):
            assert scored_last.wait(10)
        elif task == ("score", ("direct", 0)):
            scored_last.set()
            assert latent_started.wait(10)
        elif task == ("train", ("latent", 1)):
            latent_started.set()
        return task

    class Recording(ThreadPoolExecutor):
        handed: list = []

        def submit(self, fn, task):
            self.handed.append(task)
            return super().submit(fn, task)

    with Recording(4) as pool:  # more threads than allowed: run_jobs must cap it
        done = run_jobs(pool, 2, tasks, after, fake)
    assert set(done) == set(tasks)
    train = [("train", (m, s)) for m, s in [("textcot", 0), ("textcot", 1), ("oracle", 0), ("oracle", 1),
                                            ("direct", 0), ("direct", 1), ("latent", 0), ("storm", 0)]]
    # while seed 1's textcot runs, seed 0's runs (and seed 1's finished ones) are scored; once
    # it ends, seed 1's latent and storm train before any other scoring starts
    scores = [("score", (m, s)) for m, s in [("storm", 0), ("latent", 0), ("textcot", 0), ("oracle", 0),
                                             ("oracle", 1), ("direct", 0)]]
    assert Recording.handed[:16] == train + scores + [("train", ("latent", 1)), ("train", ("storm", 1))]
    assert set(Recording.handed[16:]) == {("score", (m, 1)) for m in ("direct", "textcot", "latent", "storm")}


def test_jobs_found_done_stay_out_of_the_time_left_estimate():
    """A resumed demo finds finished runs done at once: their ~0 s must not be taken for
    what a run takes (the full preset, resumed, once said ~1 min left with ~100 to go); a
    run killed half-way and resumed takes half a run, and counts as a whole one."""
    import math
    import time
    from concurrent.futures import ThreadPoolExecutor

    from stormvl.demo.schedule import run_jobs

    jobs = [("a", s) for s in range(4)]
    share = {("a", 0): 1.0, ("a", 1): 0.5, ("a", 2): 0.0, ("a", 3): 0.0}
    seen = []

    def fake(job):
        time.sleep(0.05 * (1 - share[job]))
        return job

    with ThreadPoolExecutor(1) as pool:
        done = run_jobs(pool, 1, jobs, {}, fake, lambda *a: seen.append(a), found=share.get)
    assert done == {j: j for j in jobs}  # jobs found done still run, for their results
    assert [(job, seconds is None) for job, seconds, *_ in seen] == [
        (("a", 0), True), (("a", 1), False), (("a", 2), False), (("a", 3), False)]
    assert math.isnan(seen[0][4])  # nothing measured yet
    # a1 did half its job in seen[1][1] seconds: a2 and a3 take twice that each, one worker
    assert seen[1][4] == pytest.approx(4 * seen[1][1])


def test_a_tasks_share_done_is_read_from_its_checkpoints_and_results(demo_dir, tmp_path):
    """What ``run_jobs`` is told a resumed demo has done: the test preset's finished folder
    (every task whole), an empty one, and storm's two stages trained in part."""
    from dataclasses import replace

    from stormvl.demo.pipeline import task_share_done
    from stormvl.demo.presets import PRESETS
    from stormvl.demo.schedule import task_order
    from stormvl.training.checkpoint import TRAINER_STATE, step_dir

    test = PRESETS["test"]
    tasks, _ = task_order(test, score=True)
    assert {task_share_done(test, demo_dir, t) for t in tasks} == {1.0}
    assert {task_share_done(test, tmp_path, t) for t in tasks} == {0.0}
    full = replace(PRESETS["full"], steps=1500, latent_from_textcot=1000)  # storm: 400 + 100
    storm = tmp_path / "runs" / "storm" / "seed0"
    for sub, step in [("stage1", 200), ("stage1", 400), ("stage2", 50)]:
        (step_dir(storm / sub, step)).mkdir(parents=True)
        (step_dir(storm / sub, step) / TRAINER_STATE).write_bytes(b"")
        if step == 200:
            assert task_share_done(full, tmp_path, ("train", ("storm", 0))) == 0.4
    assert task_share_done(full, tmp_path, ("train", ("storm", 0))) == 0.9
    assert task_share_done(full, tmp_path, ("score", ("storm", 0))) == 0.0


def test_time_left_counts_each_job_at_its_kinds_mean_shared_by_the_workers():
    import math
    from dataclasses import replace

    from stormvl.demo.pipeline import task_steps
    from stormvl.demo.presets import PRESETS
    from stormvl.demo.schedule import job_kind, time_left

    assert job_kind(("train", ("storm", 3))) == ("train", "storm") == job_kind(("train", ("storm", 0)))
    took = {("train", ("textcot", 0)): 600.0, ("train", ("textcot", 1)): 400.0,
            ("score", ("textcot", 0)): 30.0}
    pending = [("train", ("textcot", 2)), ("score", ("textcot", 1)), ("train", ("direct", 0))]
    # without sizes: textcot 2: 500 (its kind's mean); score: 30; direct: no kind done, the
    # mean of all, 343.3; running textcot 3 has 100 of its 500 left; 2 workers share it
    left = time_left(took, pending, {("train", ("textcot", 3)): 400.0}, parallel=2)
    assert left == pytest.approx((500 + 30 + 1030 / 3 + 100) / 2)
    # a running job past its kind's mean counts nothing more; one job left gets one worker
    assert time_left(took, [], {("train", ("textcot", 3)): 900.0}, parallel=2) == 0
    assert time_left(took, [("score", ("textcot", 4))], {}, parallel=2) == 30
    assert math.isnan(time_left({}, pending, {}, parallel=2))  # nothing finished: no estimate
    # with sizes (a run's own steps): a training run of a new kind takes the finished runs'
    # seconds per step times its steps; a scoring task of a new kind the finished scorings'
    # mean, and nothing while none has finished (not a training run's time)
    preset = replace(PRESETS["full"], steps=1500, latent_from_textcot=1000)
    size = partial(task_steps, preset)
    assert size(("train", ("latent", 0))) == size(("train", ("storm", 2))) == 500
    assert size(("train", ("direct", 0))) == 1500 and size(("score", ("direct", 0))) is None
    took = {("train", ("textcot", 0)): 750.0}
    new = [("train", ("latent", 0)), ("score", ("textcot", 0)), ("train", ("direct", 0))]
    assert time_left(took, new, {}, 1, size) == pytest.approx(0.5 * 500 + 0 + 0.5 * 1500)
    took[("score", ("storm", 0))] = 40.0
    assert time_left(took, new, {}, 1, size) == pytest.approx(250 + 40 + 750)


def test_training_workers_exit_when_the_demo_is_killed(tmp_path):
    """A demo killed by pid (not Ctrl-C, which reaches the whole group) must not leave its
    pool workers training on: they would later write into the folders of a new demo."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "pool.py"
    script.write_text(
        "import multiprocessing as mp, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from stormvl.demo.schedule import init_worker\n"
        "if __name__ == '__main__':\n"
        "    with ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=init_worker,\n"
        "                             initargs=(1, mp.get_start_method())) as pool:\n"
        "        print(pool.submit(os.getpid).result(), flush=True)\n"
        "        pool.submit(time.sleep, 120)\n"
        "        time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    worker = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        stat = Path(f"/proc/{worker}/stat")
        try:
            os.kill(worker, 0)
            if stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"):
                break  # exited; only not yet reaped (a container's init may never reap it)
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the pool worker outlived its killed parent")
