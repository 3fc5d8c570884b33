"""`procedural`: the suite's renderer through the runner gives the suite's exact thought videos."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from stormvl.cli import main
from stormvl.data.manifest import read_manifest, write_manifest
from stormvl.data.video import decode_frames, probe

HAVE_SYNTH = importlib.util.find_spec("stormvl.synth") is not None
needs_synth = pytest.mark.skipif(not HAVE_SYNTH, reason="stormvl.synth (issue 2) not merged yet")


@needs_synth
def test_procedural_reproduces_the_suite_thoughts(tmp_path, capsys):
    from stormvl.synth import build_suite

    suite = tmp_path / "suite"
    manifest = build_suite(suite, 3, frames=8, size=32, progress=False)
    rows = read_manifest(manifest)
    stripped = [r.__class__(**{**r.__dict__, "thought_video": None}) for r in rows]
    extra = stripped[0].__class__(**{**stripped[0].__dict__, "id": "real", "meta": {}})
    write_manifest(suite / "stripped.jsonl", [*stripped, extra])
    out = tmp_path / "out"
    argv = ["thoughts", "--manifest", str(suite / "stripped.jsonl"), "--out", str(out),
            "--generator", "procedural", "--no-progress"]
    assert main(argv) == 0
    assert "skip real" in capsys.readouterr().err  # not a suite row: reported, counted
    got = {r.id: r for r in read_manifest(out / "manifest.jsonl")}
    assert sorted(got) == sorted(r.id for r in rows)
    for r in rows:
        ours = out / got[r.id].thought_video
        want, _ = decode_frames(suite / r.thought_video)
        assert np.array_equal(decode_frames(ours)[0], want)
        assert probe(ours).fps == pytest.approx(probe(suite / r.video).fps)


@needs_synth
def test_degrade_wraps_procedural(tmp_path):
    from stormvl.synth import build_suite

    manifest = build_suite(tmp_path / "suite", 2, frames=8, size=32, progress=False)
    out = tmp_path / "out"
    argv = ["thoughts", "--manifest", str(manifest), "--out", str(out), "--generator", "degrade",
            "--set", "inner=procedural", "--set", "noise_sigma=20", "--overwrite", "--no-progress"]
    assert main(argv) == 0
    suite = {r.id: r for r in read_manifest(manifest)}
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == 2
    for r in rows:
        clean, _ = decode_frames(tmp_path / "suite" / suite[r.id].thought_video)
        noisy, _ = decode_frames(out / r.thought_video)
        assert noisy.shape == clean.shape
        diff = np.abs(noisy.astype(int) - clean.astype(int))
        assert 5 < diff.mean() < 30  # sigma-20 noise, not a different video


def test_procedural_without_synth_fails_at_start(tmp_path, capsys):
    if HAVE_SYNTH:
        pytest.skip("stormvl.synth is installed")
    from test_thoughts_runner import make_dataset

    man = make_dataset(tmp_path / "in", n=1)
    argv = ["thoughts", "--manifest", str(man), "--out", str(tmp_path / "o"), "--generator", "procedural"]
    assert main(argv) == 2
    assert "stormvl.synth" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
