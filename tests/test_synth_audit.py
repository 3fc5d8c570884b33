"""The shortcut audit runs, writes JSON, and flags a suite that leaks its answers."""

import json
import shutil

import pytest

from stormvl.cli import main
from stormvl.data.manifest import read_manifest, write_manifest
from stormvl.errors import UserError
from stormvl.synth import build_suite
from stormvl.synth.audit import run_audit

SMALL = dict(frames=8, size=32, seed=1, progress=False)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    build_suite(root / "train", 64, families="shell_game,direction", split="train", **SMALL)
    build_suite(root / "test", 32, families="shell_game,direction", split="test", **SMALL)
    return root


def test_audit_cli_runs_and_writes_json(suite, capsys):
    out = suite / "res" / "audit.json"
    assert main(["audit", str(suite), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "shell_game" in table and "direction" in table and "shuffled" in table
    res = json.loads(out.read_text())
    for fam in ("shell_game", "direction"):
        r = res["families"][fam]
        assert r["n_train"] == 32 and r["n_test"] == 16 and r["chance"] == 25.0
        assert r["test_letter_share"] == [25.0, 25.0, 25.0, 25.0]
        # 16 test items: loose bounds appropriate to the sample size (2,000 in docs/synth.md)
        assert r["prior"] <= 25.0 + 1e-9
        for b in ("text", "first", "last", "shuffled"):
            assert 0.0 <= r[b] <= 81.25, (fam, b, r[b])


def test_audit_flags_a_leaky_suite(suite, tmp_path):
    # Put the right option always at A and make its text unique: prior and text must catch it.
    for split in ("train", "test"):
        rows = read_manifest(suite / split / "manifest.jsonl")
        for s in rows:
            right = s.options[s.answer_index]
            s.options = ["LEAK " + right] + [o for o in s.options if o != right]
            s.answer = "A"
            s.thought_video = None
        write_manifest(tmp_path / split / "manifest.jsonl", rows)
        shutil.copytree(suite / split / "videos", tmp_path / split / "videos")
    res, _ = run_audit(tmp_path)
    r = res["families"]["shell_game"]
    assert r["prior"] == 100.0 and r["text"] == 100.0 and not r["pass"] and not res["all_pass"]


def test_audit_needs_train_and_test(tmp_path, suite):
    with pytest.raises(UserError, match="no manifest"):
        run_audit(tmp_path)
    with pytest.raises(UserError, match="train and the test split"):
        run_audit(suite / "train")
