"""`procedural`: the suite's renderer through the runner gives the suite's exact thought videos."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from stormvl.cli import main
from stormvl.data.manifest import read_manifest, write_manifest
from stormvl.data.video import decode_frames, probe
from stormvl.synth import build_suite


def test_procedural_reproduces_the_suite_thoughts(tmp_path, capsys):
    suite = tmp_path / "suite"
    manifest = build_suite(suite, 3, frames=8, size=32, progress=False)
    rows = read_manifest(manifest)
    stripped = [replace(r, thought_video=None) for r in rows]
    extra = replace(stripped[0], id="real", meta={})
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


def test_degrade_wraps_procedural(tmp_path):
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

