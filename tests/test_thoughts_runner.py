"""`stormvl thoughts` runner: outputs, resume after a kill, sharding + merge, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stormvl.cli import main
from stormvl.data.manifest import Sample, read_manifest, resolve_media, write_manifest
from stormvl.data.video import decode_frames, write_video
from stormvl.errors import UserError
from stormvl.thoughts import GenConfig, Generator, InputClip, register, sample_seed
from stormvl.thoughts.runner import merge_shards, run_thoughts, thought_name


@dataclass
class ToyConfig(GenConfig):
    """Toy generator: the input clip's frames, brightened by a per-sample random offset."""

    input_frames: int = 3
    lossless: bool = True
    reject: str = ""  # a sample id the toy refuses with a UserError
    sleep: float = 0.0  # seconds per video (to kill a real process mid-run)


class ToyGenerator(Generator):
    name = "toy"
    config_cls = ToyConfig
    made = 0  # videos made by this instance
    kill_after = -1  # raise KeyboardInterrupt (Ctrl-C) after this many videos

    def generate(self, sample: Sample, clip: InputClip) -> np.ndarray:
        if sample.id == self.config.reject:
            raise UserError(f"sample {sample.id!r}: toy refuses it")
        if self.made == self.kill_after:
            raise KeyboardInterrupt
        self.made += 1
        time.sleep(self.config.sleep)
        rng = np.random.default_rng(sample_seed(self.config.seed, sample.id))
        offset = int(rng.integers(10, 100))
        return ((clip.frames.astype(np.int32) + offset) % 256).astype(np.uint8)  # (T, H, W, 3)


register("toy", lambda: ToyGenerator)


def make_dataset(root: Path, n: int = 5, size: tuple[int, int] = (16, 24)) -> Path:
    """n tiny videos under root/media and a manifest root/in.jsonl; returns the manifest."""
    rng = np.random.default_rng(0)
    samples = []
    for k in range(n):
        frames = rng.integers(0, 256, (6, *size, 3), dtype=np.uint8)  # (T, H, W, 3)
        write_video(root / "media" / f"v{k}.mp4", frames, fps=6, lossless=True)
        samples.append(Sample(
            id=f"s{k}", video=f"media/v{k}.mp4", question=f"Where does ball {k} go?",
            options=["left", "right"], answer="A", rationale="It rolls left.", end=0.5,
        ))
    write_manifest(root / "in.jsonl", samples)
    return root / "in.jsonl"


def cli(*args: str) -> int:
    return main(["thoughts", *map(str, args), "--no-progress"] if args[0] != "merge"
                else ["thoughts", *map(str, args)])


def outputs(d: Path, manifest: str = "manifest.jsonl") -> dict[str, bytes]:
    """Manifest text + every thought video's bytes, for byte-exact comparisons."""
    files = {manifest: (d / manifest).read_bytes()}
    for s in read_manifest(d / manifest):
        files[s.thought_video] = resolve_media(d, s.thought_video).read_bytes()
    return files


def test_run_writes_videos_manifest_and_stats(tmp_path):
    man = make_dataset(tmp_path / "in")
    out = tmp_path / "out"
    assert cli("--manifest", man, "--out", out, "--generator", "toy") == 0
    rows = read_manifest(out / "manifest.jsonl")
    assert [r.id for r in rows] == [f"s{k}" for k in range(5)]
    for r in rows:
        # Paths are relative to DIR and stay inside it (the input videos are linked in).
        assert r.video == f"videos/media/{r.id.replace('s', 'v')}.mp4"
        assert r.thought_video == f"thoughts/{r.id}.mp4"
        thought, _ = decode_frames(resolve_media(out, r.thought_video))
        src, _ = decode_frames(resolve_media(out, r.video))
        assert thought.shape == (3, 16, 24, 3)
        assert not np.array_equal(thought, src[[0, 2, 5]])  # the toy changed the frames
        assert r.question and r.rationale == "It rolls left."
    stats = json.loads((out / "stats.json").read_text())
    assert stats["summary"]["generated"] == 5 and stats["summary"]["skipped"] == 0
    assert stats["summary"]["seconds_per_video"] > 0
    assert len(stats["seconds"]) == 5


def test_resume_after_kill_loses_nothing(tmp_path, capsys):
    man = make_dataset(tmp_path / "in")
    straight = tmp_path / "straight"
    assert cli("--manifest", man, "--out", straight, "--generator", "toy") == 0
    out = tmp_path / "out"
    gen = ToyGenerator(ToyConfig())
    gen.kill_after = 2
    with pytest.raises(KeyboardInterrupt):  # killed while making the third video
        run_thoughts(man, out, gen, progress=False)
    assert sorted(p.name for p in (out / "thoughts").iterdir()) == ["s0.mp4", "s1.mp4"]
    assert not (out / "manifest.jsonl").exists()
    # A torn output (e.g. a file copied half-way) must not count as done.
    (out / "thoughts" / "s1.mp4").write_bytes(b"\x00" * 100)
    # run.json pins the config: resuming with a different one is refused.
    assert cli("--manifest", man, "--out", out, "--generator", "toy", "--set", "seed=3") == 2
    assert "different config" in capsys.readouterr().err
    # Batch size is a runtime setting: resuming with another one is fine.
    stats = run_thoughts(man, out, ToyGenerator(ToyConfig(batch_size=3)), progress=False)
    assert (stats.resumed, stats.generated) == (1, 4)
    assert outputs(out) == outputs(straight)


def test_shards_then_merge_equal_unsharded(tmp_path):
    man = make_dataset(tmp_path / "in", n=7)
    full = tmp_path / "full"
    assert cli("--manifest", man, "--out", full, "--generator", "toy", "--set", "batch_size=2") == 0
    # Same folder for every shard (shared filesystem) ...
    same = tmp_path / "same"
    for i in range(3):
        assert cli("--manifest", man, "--out", same, "--generator", "toy", "--shard", f"{i}/3") == 0
    assert [r.id for r in read_manifest(same / "manifest.shard-1-of-3.jsonl")] == ["s1", "s4"]
    assert cli("merge", same) == 0
    assert outputs(same) == outputs(full)
    # ... or one folder per machine, merged into a new one.
    dirs = [tmp_path / f"m{i}" for i in range(3)]
    for i, d in enumerate(dirs):
        assert cli("--manifest", man, "--out", d, "--generator", "toy", "--shard", f"{i}/3") == 0
    assert cli("merge", *dirs, "--out", tmp_path / "merged") == 0
    assert outputs(tmp_path / "merged") == outputs(full)
    stats = json.loads((tmp_path / "merged" / "stats.json").read_text())
    assert stats["summary"]["generated"] == 7


def test_merge_refuses_incomplete_or_mixed_shards(tmp_path, capsys):
    man = make_dataset(tmp_path / "in", n=4)
    d = tmp_path / "d"
    assert cli("--manifest", man, "--out", d, "--generator", "toy", "--shard", "0/2") == 0
    assert cli("merge", d) == 2
    assert "shards [1] of 2" in capsys.readouterr().err
    assert not (d / "manifest.jsonl").exists()
    assert cli("--manifest", man, "--out", d, "--generator", "toy", "--shard", "0/3") == 0
    assert cli("merge", d) == 2
    assert "shard counts" in capsys.readouterr().err
    with pytest.raises(UserError, match="no shard manifests"):
        merge_shards([tmp_path / "in"])


def test_bad_rows_are_reported_skipped_and_counted(tmp_path, capsys):
    man = make_dataset(tmp_path / "in", n=6)
    rows = read_manifest(man)
    rows[5].video = "../outside.mp4"  # escapes the manifest's folder
    write_manifest(man, rows)
    (tmp_path / "in" / "media" / "v1.mp4").unlink()  # missing
    (tmp_path / "in" / "media" / "v3.mp4").write_bytes(b"not a video at all")  # unreadable
    out = tmp_path / "out"
    assert cli("--manifest", man, "--out", out, "--generator", "toy", "--set", "reject=s4") == 0
    captured = capsys.readouterr()
    assert "skip s1" in captured.err and "v1.mp4" in captured.err
    assert "skip s3" in captured.err and "skip s4" in captured.err
    assert "skip s5" in captured.err and "escapes the media root" in captured.err
    assert "skipped 4" in captured.out
    assert [r.id for r in read_manifest(out / "manifest.jsonl")] == ["s0", "s2"]
    stats = json.loads((out / "stats.json").read_text())
    assert sorted(s["id"] for s in stats["skipped"]) == ["s1", "s3", "s4", "s5"]


def test_rows_with_a_thought_video_are_kept_not_regenerated(tmp_path):
    man = make_dataset(tmp_path / "in", n=3)
    rows = read_manifest(man)
    own = np.full((2, 16, 24, 3), 77, np.uint8)
    write_video(tmp_path / "in" / "th" / "mine.mp4", own, fps=6, lossless=True)
    rows[1].thought_video = "th/mine.mp4"
    write_manifest(man, rows)
    out = tmp_path / "out"
    stats = run_thoughts(man, out, ToyGenerator(ToyConfig()), progress=False)
    assert (stats.existing, stats.generated) == (1, 2)
    got = {r.id: r for r in read_manifest(out / "manifest.jsonl")}
    assert got["s1"].thought_video == "thoughts/s1.mp4"
    assert np.array_equal(decode_frames(out / "thoughts" / "s1.mp4")[0], own)
    # --overwrite regenerates it with the generator.
    stats = run_thoughts(man, out, ToyGenerator(ToyConfig()), overwrite=True, progress=False)
    assert (stats.existing, stats.generated) == (0, 3)


def test_cli_input_errors_exit_2_before_writing(tmp_path, capsys):
    man = make_dataset(tmp_path / "in", n=2)
    out = tmp_path / "out"
    assert cli("--manifest", man, "--out", out, "--generator", "nope") == 2
    assert "unknown generator 'nope'" in capsys.readouterr().err
    assert cli("--manifest", man, "--out", out, "--generator", "toy", "--shard", "3/3") == 2
    assert "--shard" in capsys.readouterr().err
    assert cli("--manifest", man, "--out", out, "--generator", "toy", "--set", "batch_size=0") == 2
    assert "batch_size" in capsys.readouterr().err
    assert cli("--manifest", tmp_path / "none.jsonl", "--out", out, "--generator", "toy") == 2
    assert "none.jsonl" in capsys.readouterr().err
    assert cli("--manifest", man, "--out", tmp_path / "in", "--generator", "toy") == 0  # other name
    assert cli("--manifest", out / "manifest.jsonl", "--out", out, "--generator", "toy") == 2
    assert not out.exists()


def test_odd_ids_get_safe_unique_file_names():
    names = {thought_name(i) for i in ("a/b", "a_b", "../x", "a b", "ok-1.2")}
    assert len(names) == 5 and "ok-1.2.mp4" in names
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_resume_trusts_the_done_log_and_overwrite_starts_clean(tmp_path, monkeypatch):
    import stormvl.thoughts.runner as runner

    man = make_dataset(tmp_path / "in", n=4)
    out = tmp_path / "out"
    run_thoughts(man, out, ToyGenerator(ToyConfig()), progress=False)
    checked = []
    real = runner.decodes
    monkeypatch.setattr(runner, "decodes", lambda p: checked.append(p.name) or real(p))
    stats = run_thoughts(man, out, ToyGenerator(ToyConfig()), progress=False)
    assert (stats.resumed, stats.generated, checked) == (4, 0, [])  # logged: no decoding
    (out / "done.jsonl").unlink()  # log lost: files are decoded once instead
    stats = run_thoughts(man, out, ToyGenerator(ToyConfig()), progress=False)
    assert (stats.resumed, len(checked)) == (4, 4)
    # A killed --overwrite run must not resume files from before the overwrite.
    gen = ToyGenerator(ToyConfig(seed=5))
    gen.kill_after = 1
    with pytest.raises(KeyboardInterrupt):
        run_thoughts(man, out, gen, overwrite=True, progress=False)
    stats = run_thoughts(man, out, ToyGenerator(ToyConfig(seed=5)), progress=False)
    assert (stats.resumed, stats.generated) == (1, 3)


def test_sigkill_mid_run_then_resume(tmp_path):
    """A real process killed with SIGKILL (no cleanup at all) resumes without loss."""
    man = make_dataset(tmp_path / "in", n=6)
    straight = tmp_path / "straight"
    assert cli("--manifest", man, "--out", straight, "--generator", "toy") == 0
    out = tmp_path / "out"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_thoughts_runner; "
            "from stormvl.cli import main; sys.exit(main(sys.argv[1:]))")
    args = ["thoughts", "--manifest", str(man), "--out", str(out), "--generator", "toy",
            "--set", "sleep=0.2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / "thoughts").glob("*.mp4"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "thoughts").glob("*.mp4")))
    assert 2 <= done < 6 and not (out / "manifest.jsonl").exists()
    stats = run_thoughts(man, out, ToyGenerator(ToyConfig(sleep=0.2)), progress=False)
    assert stats.resumed + stats.generated == 6 and stats.resumed >= 2
    assert outputs(out) == outputs(straight)
