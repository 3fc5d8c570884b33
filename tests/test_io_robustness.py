"""Files that are not UTF-8, a disk that fills, temporaries a killed job left, cost records
that survive resumes, and no run-like folder left by a run refused on bad input.

A full disk cannot be made in a test; it is simulated where the OS reports it: the write
primitive (``os.fsync``, ``torch.save``, the video encoder) raises what a full disk raises
(``OSError`` ENOSPC, torch's ``inline_container.cc`` RuntimeError).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stormvl.cli import main
from stormvl.config import load_config, save_config
from stormvl.data.manifest import (
    JsonlAppender,
    ManifestError,
    read_jsonl_tolerant,
    read_manifest,
    write_manifest,
)
from stormvl.errors import ConfigError, DiskFullError
from stormvl.io import is_disk_full, remove_stale_temps
from stormvl.training.config import TrainConfig
from stormvl.training.importers import read_records
from test_thoughts_runner import ToyConfig, ToyGenerator, make_dataset, outputs
from train_fixtures import make_suite, tiny_config

ENOSPC = OSError(errno.ENOSPC, "No space left on device")
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                          "failed writing file data/0: file write failed")
SYNTH = ["--n", "3", "--families", "shell_game", "--frames", "8", "--size", "32"]


def error_line(capsys) -> str:
    """The one stderr line of a refused command (no traceback, nothing else)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def corrupt_line(path: Path, line: int) -> None:
    """Put a byte that is not UTF-8 (a Latin-1 'é') into ``line`` (1-based) of a text file."""
    rows = path.read_bytes().split(b"\n")
    rows[line - 1] = rows[line - 1].replace(b'"', b'"\xe9', 1)
    path.write_bytes(b"\n".join(rows))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


# --- D2: a byte that is not UTF-8 -----------------------------------------------------------


def test_manifest_and_logs_name_file_and_line_of_a_bad_byte(tmp_path):
    man = make_dataset(tmp_path, n=3)
    corrupt_line(man, 2)
    with pytest.raises(ManifestError, match=rf"^{man}:2: not valid UTF-8$"):
        read_manifest(man)
    log = tmp_path / "done.jsonl"
    log.write_bytes(b'{"id": "a"}\n{"id": "\xe9"}\n{"id": "c"}\n')
    with pytest.raises(ManifestError, match=rf"^{log}:2: not valid UTF-8$"):
        read_jsonl_tolerant(log)
    # a writer killed inside a multi-byte character: the torn last line is dropped
    log.write_bytes(b'{"id": "a"}\n{"id": "' + "é".encode()[:1])
    assert read_jsonl_tolerant(log) == [{"id": "a"}]


def test_importers_and_configs_name_file_and_line_of_a_bad_byte(tmp_path):
    jsonl = tmp_path / "r1.jsonl"
    jsonl.write_bytes(b'{"problem": "a"}\n\n{"problem": "\xff"}\n')
    with pytest.raises(ManifestError, match=r"r1\.jsonl:3: not valid UTF-8$"):
        read_records(jsonl)
    listed = tmp_path / "demo.json"
    listed.write_bytes(b'[\n {"messages": []},\n {"videos": ["\xff.mp4"]}\n]')
    with pytest.raises(ManifestError, match=r"demo\.json:3: not valid UTF-8$"):
        read_records(listed)
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"seed: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:2: not valid UTF-8$"):
        load_config(TrainConfig, cfg, [])


def test_line_separators_inside_json_strings_are_not_line_breaks(tmp_path):
    """JSON text may hold U+2028 / U+0085 raw (written with ensure_ascii=False)."""
    log = tmp_path / "log.jsonl"
    rows = [{"id": "a", "response": "one\u2028two\u0085three\x1cfour"}, {"id": "b"}]
    with JsonlAppender(log) as app:
        for r in rows:
            app.write(r)
    assert read_jsonl_tolerant(log) == rows


def test_a_whole_last_row_without_its_newline_is_kept_on_append(tmp_path):
    """The writer stopped right before the newline: readers count the row, so appends keep it."""
    log = tmp_path / "log.jsonl"
    log.write_text('{"id": 1}\n{"id": 2}')
    assert [r["id"] for r in read_jsonl_tolerant(log)] == [1, 2]
    with JsonlAppender(log) as app:
        app.write({"id": 3})
    assert [r["id"] for r in read_jsonl_tolerant(log)] == [1, 2, 3]
    log.write_text('{"id": 1}\n{"id": 2')  # torn: cut, as before
    with JsonlAppender(log) as app:
        app.write({"id": 3})
    assert log.read_text() == '{"id": 1}\n{"id": 3}\n'


def test_cli_score_eval_thoughts_refuse_a_bad_byte_in_one_line(tmp_path, capsys):
    import fixtures_tasks as ft

    data = ft.write_synth(tmp_path / "bench", videos=False)
    preds = ft.write_predictions(tmp_path / "preds.jsonl", [("s0", "A"), ("s1", "B")])
    corrupt_line(preds, 2)
    assert main(["score", "--benchmark", "synth", "--data", str(data),
                 "--predictions", str(preds)]) == 2
    assert error_line(capsys) == f"error: {preds}:2: not valid UTF-8"

    corrupt_line(data / "manifest.jsonl", 3)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--benchmark", "synth",
                 "--data", str(data), "--out", str(out), "--no-progress"]) == 2
    assert error_line(capsys) == f"error: {data / 'manifest.jsonl'}:3: not valid UTF-8"
    assert not out.exists()

    man = make_dataset(tmp_path / "in", n=2)
    corrupt_line(man, 1)
    assert main(["thoughts", "--manifest", str(man), "--out", str(out), "--generator", "toy",
                 "--no-progress"]) == 2
    assert error_line(capsys) == f"error: {man}:1: not valid UTF-8"
    assert not out.exists()


# --- a run refused on bad input leaves no run-like folder ----------------------------------


def test_train_refused_on_its_manifest_leaves_no_out_dir(tmp_path, capsys):
    man = make_suite(tmp_path / "data", n=4, thought=False)
    corrupt_line(man, 2)
    out = tmp_path / "run"
    save_config(tiny_config(out, man, max_steps=2), tmp_path / "cfg.yaml")
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 2
    assert error_line(capsys) == f"error: {man}:2: not valid UTF-8"
    assert not out.exists()
    # a folder the user made keeps what it held, and nothing more
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_train_refused_at_its_first_batch_takes_back_config_and_logs(tmp_path, capsys):
    """Every video of the first batch is unreadable: found only after config.yaml,
    metrics.jsonl and tensorboard/ exist; none of them may stay."""
    man = make_suite(tmp_path / "data", n=4, thought=False)
    for k in range(4):
        (man.parent / f"v{k}.mp4").write_bytes(b"not a video")
    out = tmp_path / "run"
    save_config(tiny_config(out, man, max_steps=2, tensorboard=True), tmp_path / "cfg.yaml")
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 2
    assert "every sample of the first batch failed to load" in error_line(capsys)
    assert not out.exists()


# --- D5: disk full ---------------------------------------------------------------------------


def test_disk_full_is_recognised_in_each_library_form():
    from safetensors import SafetensorError

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(TORCH_FULL)
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:626] . unexpected "
                                     "pos 704 vs 598"))
    assert is_disk_full(SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                                        'StorageFull, message: "No space left on device" })'))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("PytorchStreamReader failed reading zip archive: failed "
                                         "finding central directory (inline_container.cc)"))


def test_synth_disk_full_one_line_nothing_half_written_rerun_exact(tmp_path, capsys, monkeypatch):
    import stormvl.synth.build as build

    ref = tmp_path / "ref"
    assert main(["synth", "--out", str(ref), *SYNTH]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    real, calls = build.write_video, []

    def filling(path, *a, **k):  # the 4th video (the 2nd item's thought) hits a full disk
        calls.append(path)
        if len(calls) == 4:
            Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp").write_bytes(b"\0" * 9)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, *a, **k)

    monkeypatch.setattr(build, "write_video", filling)
    assert main(["synth", "--out", str(out), *SYNTH]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the progress bar)
    assert err == (f"error: {out / 'thoughts'}: no space left on device "
                   f"(while writing shell_game-train-000001.mp4)")
    assert [r["id"] for r in read_jsonl_tolerant(out / "manifest.jsonl")] == [
        "shell_game-train-000000"]
    monkeypatch.setattr(build, "write_video", real)
    assert main(["synth", "--out", str(out), *SYNTH]) == 0
    assert (out / "manifest.jsonl").read_bytes() == (ref / "manifest.jsonl").read_bytes()
    assert leftovers(out) == []


def test_manifest_write_on_a_full_disk_leaves_no_temporary(tmp_path, monkeypatch, capsys):
    man = make_dataset(tmp_path, n=2)
    rows = read_manifest(man)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "out" / "manifest.jsonl"
    with pytest.raises(DiskFullError, match=rf"^{target.parent}: no space left on device "
                                            r"\(while writing manifest\.jsonl\)$"):
        write_manifest(target, rows)
    assert not target.exists() and leftovers(tmp_path) == []


def test_train_disk_full_at_a_checkpoint(tmp_path, capsys, monkeypatch):
    man = make_suite(tmp_path / "data", n=4, thought=False)
    out = tmp_path / "run"
    save_config(tiny_config(out, man, max_steps=2, every=2), tmp_path / "cfg.yaml")
    real = torch.save

    def filling(obj, f, *a, **k):
        Path(f).write_bytes(b"\0" * 5)  # what a full disk leaves: a torn file
        raise TORCH_FULL

    monkeypatch.setattr(torch, "save", filling)
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 2
    assert error_line(capsys) == (f"error: {out / 'checkpoints'}: no space left on device "
                                  "(while writing step-000002)")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == []  # no partial folder
    monkeypatch.setattr(torch, "save", real)
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 0
    assert (out / "checkpoints" / "step-000002" / "trainer_state.pt").is_file()


def test_eval_disk_full_then_rerun_matches_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    import fixtures_tasks as ft
    from stormvl.backbones.tiny import build_tiny
    from test_eval import save_checkpoint

    ckpt = save_checkpoint(build_tiny("qwen2_5_vl", "tiny", seed=0), tmp_path / "ck", "direct")
    data = ft.write_synth(tmp_path / "bench")

    def evaluate(out: Path) -> int:
        return main(["eval", "--model", str(ckpt), "--benchmark", "synth", "--data", str(data),
                     "--out", str(out), "--no-progress", "--device", "cpu", "--batch-size", "2"])

    assert evaluate(tmp_path / "ref") == 0
    capsys.readouterr()
    real, n = os.fsync, []

    def filling(fd):
        n.append(fd)
        if len(n) == 2:  # the second prediction row
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", filling)
    out = tmp_path / "out"
    assert evaluate(out) == 2
    assert error_line(capsys) == (f"error: {out}: no space left on device "
                                  "(while writing predictions.jsonl)")
    assert not (out / "results.json").exists()
    monkeypatch.setattr(os, "fsync", real)
    assert evaluate(out) == 0

    def answers(d: Path) -> dict:
        return {r["id"]: r["response"] for r in read_jsonl_tolerant(d / "predictions.jsonl")}

    assert answers(out) == answers(tmp_path / "ref") and len(answers(out)) == 4


def test_thoughts_disk_full_then_rerun_exact(tmp_path, capsys, monkeypatch):
    import stormvl.thoughts.runner as runner

    man = make_dataset(tmp_path / "in", n=4)
    ref = tmp_path / "ref"
    assert main(["thoughts", "--manifest", str(man), "--out", str(ref), "--generator", "toy",
                 "--no-progress"]) == 0
    capsys.readouterr()
    real, calls = runner.write_video, []

    def filling(path, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, *a, **k)

    monkeypatch.setattr(runner, "write_video", filling)
    out = tmp_path / "out"
    args = ["thoughts", "--manifest", str(man), "--out", str(out), "--generator", "toy",
            "--no-progress"]
    assert main(args) == 2
    assert error_line(capsys) == (f"error: {out / 'thoughts'}: no space left on device "
                                  "(while writing s2.mp4)")
    assert not (out / "manifest.jsonl").exists()
    monkeypatch.setattr(runner, "write_video", real)
    assert main(args) == 0
    assert outputs(out) == outputs(ref) and leftovers(out) == []


def test_a_write_outside_the_wrapped_sites_still_gives_one_line(tmp_path, capsys, monkeypatch):
    import stormvl.report.demo_report as demo_report

    (tmp_path / "results.json").write_text("{}")

    def full(results, folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "report.md"))

    monkeypatch.setattr(demo_report, "write_report", full)
    assert main(["report", str(tmp_path)]) == 2
    assert error_line(capsys) == (f"error: {tmp_path}: no space left on device "
                                  "(while writing report.md)")


# --- D6: temporaries a killed job left --------------------------------------------------------


def test_resumed_synth_removes_its_stale_temporaries(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["synth", "--out", str(out), *SYNTH]) == 0
    pid = dead_pid()
    stale = [out / f".manifest.jsonl.{pid}.tmp", out / f".synth.json.{pid}.140213.tmp",
             out / "videos" / f".shell_game-train-000001.mp4.{pid}.tmp"]
    for p in stale:
        p.write_bytes(b'{"id": "half')
    assert main(["synth", "--out", str(out), *SYNTH]) == 0
    assert leftovers(out) == []


def test_resumed_thoughts_removes_its_own_stale_temporaries_only(tmp_path, capsys):
    man = make_dataset(tmp_path / "in", n=4)
    out = tmp_path / "out"
    args = ["thoughts", "--manifest", str(man), "--out", str(out), "--generator", "toy",
            "--no-progress", "--shard", "0/2"]  # rows s0, s2
    assert main(args) == 0
    dead, alive = dead_pid(), os.getppid()
    mine = [out / "thoughts" / f".s2.mp4.{dead}.tmp",
            out / "videos" / "media" / f".v2.mp4.{dead}.tmp",
            out / f".manifest.shard-0-of-2.jsonl.{dead}.tmp",
            out / f".done.shard-0-of-2.jsonl.{dead}.tmp"]
    kept = [out / "thoughts" / f".s1.mp4.{dead}.tmp",  # shard 1's row: not this job's
            out / f".manifest.shard-1-of-2.jsonl.{dead}.tmp",
            out / "thoughts" / f".s0.mp4.{alive}.tmp"]  # its writer still runs
    for p in mine + kept:
        p.write_bytes(b"\0")
    assert main(args) == 0
    assert leftovers(out) == sorted(str(p.relative_to(out)) for p in kept)


def test_remove_stale_temps_reads_names_with_dots_and_thread_ids(tmp_path):
    pid = dead_pid()
    for name in (f".a.b.json.{pid}.77.tmp", f".a.b.json.{pid}.tmp", f".a.json.{pid}.tmp",
                 f".a.b.json.x{pid}.tmp", "a.b.json"):
        (tmp_path / name).write_text("")
    assert remove_stale_temps(tmp_path, ["a.b.json"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".a.json.{pid}.tmp", f".a.b.json.x{pid}.tmp", "a.b.json"])


# --- D8: thought-video cost after resumes ----------------------------------------------------


def test_thoughts_cost_table_counts_every_video_however_often_resumed(tmp_path):
    from stormvl.thoughts.runner import run_thoughts

    man = make_dataset(tmp_path / "in", n=5)
    out = tmp_path / "out"
    gen = ToyGenerator(ToyConfig())
    gen.kill_after = 2
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while making the third video
        run_thoughts(man, out, gen, progress=False)
    first = run_thoughts(man, out, ToyGenerator(ToyConfig()), progress=False)
    assert (first.generated, first.resumed) == (3, 2)
    logged = {r["id"]: r["seconds"] for r in read_jsonl_tolerant(out / "done.jsonl")}
    assert sorted(logged) == [f"s{k}" for k in range(5)]
    assert first.seconds == [logged[f"s{k}"] for k in range(5)]
    again = run_thoughts(man, out, ToyGenerator(ToyConfig()), progress=False)
    assert (again.generated, again.resumed) == (0, 5)
    saved = json.loads((out / "stats.json").read_text())
    assert saved["seconds"] == first.seconds
    cost = ("seconds_per_video", "seconds_per_video_median", "generate_seconds_total")
    assert {k: saved["summary"][k] for k in cost} == {k: first.summary()[k] for k in cost}
    assert "nothing generated" not in "\n".join(again.describe())
