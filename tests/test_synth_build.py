"""The suite builder and CLI: determinism across workers, resume after a kill, bad arguments."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stormvl.cli import main
from stormvl.data.manifest import read_manifest, resolve_media
from stormvl.data.video import decode_frames
from stormvl.errors import UserError
from stormvl.synth import FAMILIES, build_suite, regenerate

SMALL = dict(frames=8, size=32, seed=7, progress=False)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _decoded(root: Path):
    out = {}
    for s in read_manifest(root / "manifest.jsonl"):
        v, _ = decode_frames(resolve_media(root, s.video))
        t, _ = decode_frames(resolve_media(root, s.thought_video))
        out[s.id] = (v, t)
    return out


def test_same_bytes_and_frames_for_any_worker_count(tmp_path):
    n = 2 * len(FAMILIES) + 3  # uneven spread: the first 3 families get one more
    a = build_suite(tmp_path / "w1", n, workers=1, **SMALL)
    b = build_suite(tmp_path / "w2", n, workers=2, **SMALL)
    assert a.read_bytes() == b.read_bytes()
    rows = read_manifest(a)
    assert len(rows) == n and [r.id for r in rows] == sorted(r.id for r in rows)
    fa, fb = _decoded(tmp_path / "w1"), _decoded(tmp_path / "w2")
    for s in rows:
        assert np.array_equal(fa[s.id][0], fb[s.id][0]) and np.array_equal(fa[s.id][1], fb[s.id][1])
        item = regenerate(s)  # "lossless" yuv444 qp0: the generated pixels within 2-3 levels
        for got, want in ((fa[s.id][0], item.video), (fa[s.id][1], item.thought)):
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 3
        assert s.state and all("probe" in st for st in s.state)
        assert s.thought_video.startswith("thoughts/") and s.video.startswith("videos/")


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    n = 60
    ref = build_suite(tmp_path / "ref", n, families="shell_game,event_count", **SMALL)
    out = tmp_path / "killed"
    code = (
        "from stormvl.synth import build_suite\n"
        f"build_suite({str(out)!r}, {n}, families='shell_game,event_count', frames=8, size=32, "
        "seed=7, progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if manifest.exists() and manifest.read_text().count("\n") >= 8:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = manifest.read_text().count("\n")
    assert 0 < partial < n, "the kill should land mid-run"
    assert not json.loads((out / "synth.json").read_text())["complete"]
    build_suite(out, n, families="shell_game,event_count", **SMALL)  # same arguments: resume
    assert manifest.read_bytes() == ref.read_bytes()
    ids = [s.id for s in read_manifest(manifest)]
    assert len(ids) == len(set(ids)) == n
    assert not list(out.glob("*/.*.tmp"))
    got, want = _decoded(out), _decoded(tmp_path / "ref")
    for k, (v, t) in want.items():
        assert np.array_equal(got[k][0], v) and np.array_equal(got[k][1], t)


def test_non_empty_dir_rules(tmp_path):
    out = tmp_path / "s"
    build_suite(out, 4, families="speed", **SMALL)
    build_suite(out, 4, families="speed", **SMALL)  # same arguments: accepted (no-op resume)
    with pytest.raises(UserError, match="other arguments.*differs in: n"):
        build_suite(out, 5, families="speed", **SMALL)
    build_suite(out, 5, families="speed", overwrite=True, **SMALL)
    assert len(read_manifest(out / "manifest.jsonl")) == 5
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        build_suite(foreign, 4, **SMALL)


def test_families_cli_lists_all(capsys):
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in FAMILIES)
    assert len(out.strip().splitlines()) == len(FAMILIES)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--families", "shell_game,nope"], "unknown family 'nope'"),
        (["--n", "0"], "--n 0"),
        (["--frames", "4"], "--frames 4 is too few"),
        (["--size", "63"], "--size 63"),
        (["--size", "16"], "--size 16"),
        (["--split", "dev"], "--split 'dev'"),
        (["--difficulty", "insane"], "--difficulty 'insane'"),
        (["--workers", "0"], "--workers 0"),
        (["--intro", "1.5"], "--intro 1.5"),
        (["--option-order", "sorted"], "--option-order 'sorted'"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, capsys, extra, needle):
    out = tmp_path / "never"
    args = ["synth", "--out", str(out), "--n", "4", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unwritable_out_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["synth", "--out", str(blocker / "sub"), "--n", "2"]) == 2
    assert "not a writable directory" in capsys.readouterr().err
    assert main(["synth", "--out", str(blocker), "--n", "2"]) == 2
    assert blocker.read_text() == "x"


def test_cli_synth_writes_suite(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--n", "3", "--families", "rotation", "--frames", "8",
            "--size", "32", "--split", "ood", "--difficulty", "hard"]
    assert main(args) == 0
    rows = read_manifest(out / "manifest.jsonl")
    assert [r.split for r in rows] == ["ood"] * 3 and {r.difficulty for r in rows} == {"hard"}
    meta = json.loads((out / "synth.json").read_text())
    assert meta["complete"] and meta["families"] == ["rotation"] and meta["n"] == 3
