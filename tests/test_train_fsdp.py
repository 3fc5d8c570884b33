"""2-process CPU FSDP (gloo, `accelerate launch` with the shipped FSDP config) follows the
1-process loss trajectory, writes consolidated HF checkpoints, and resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stormvl.config import to_dict
from stormvl.errors import UserError
from stormvl.training import fsdp
from stormvl.training.checkpoint import read_trainer_state
from stormvl.training.loop import train
from train_fixtures import free_port, make_suite, metric, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _launch_fsdp(config: Path, *extra: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml"),
           "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           "-m", "stormvl", "train", str(config), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def _storm(out: Path, suite: Path, **kw):
    cfg = tiny_config(out, suite, "storm", every=2, **kw)
    cfg.targets.dim = 32  # narrower than the hidden width (64): a trained linear projector
    return cfg


def test_two_process_fsdp_matches_one_process_and_resumes(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    suite = make_suite(tmp_path / "data")
    # same global batch: 1 x 4 here, 2 processes x 2 there; storm: K+1 passes over one KV
    # cache, frozen vision tower beside trained weights, and the Stage-I projector
    train(_storm(tmp_path / "one", suite, batch_size=4, max_steps=4))
    cfg = to_dict(_storm(tmp_path / "two", suite, batch_size=2, max_steps=2))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(cfg))
    out = _launch_fsdp(tmp_path / "two.yaml")  # steps 1-2, checkpoint at 2
    # tiny model: 2 decoder layers + 1 vision block + the root
    assert "FSDP: 4 units sharded over 2 processes" in out, out
    state = read_trainer_state(tmp_path / "two" / "checkpoints" / "step-000002")
    assert state["optimizer_format"] == "fsdp" and state["optimizer"]["state"]
    _launch_fsdp(tmp_path / "two.yaml", "--resume", "optim.max_steps=4")  # steps 3-4
    one, two = metric(tmp_path / "one"), metric(tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (one, two)

    # the consolidated checkpoint is a plain HF one, equal to the 1-process run's weights
    a_dir, b_dir = (tmp_path / d / "checkpoints" / "step-000004" for d in ("one", "two"))
    a = AutoModelForImageTextToText.from_pretrained(a_dir).state_dict()
    b = AutoModelForImageTextToText.from_pretrained(b_dir).state_dict()
    assert a.keys() == b.keys()
    # Compared per tensor against what steps 3-4 moved it (the 1-process run): Adam divides
    # each gradient entry by its own running scale, so an entry whose gradient is ~0 turns
    # summation-order noise into a visible fraction of one step (2e-4 on one weight seen on
    # an AMD EPYC core, with lr 5e-3); a dropped shard or unsynchronised gradient moves the
    # whole tensor instead. Frozen tensors (vision tower) must not move at all.
    mid = AutoModelForImageTextToText.from_pretrained(a_dir.with_name("step-000002")).state_dict()
    for k in a:
        moved = float((a[k] - mid[k]).norm())
        gap = float((a[k] - b[k]).norm())
        assert gap <= 1e-2 * moved or (moved == 0 and gap < 1e-6), (k, gap, moved)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 0.1 * 5e-3, worst  # and no entry off by a tenth of one step's lr
    pa, pb = load_file(a_dir / "align_projector.safetensors"), load_file(b_dir / "align_projector.safetensors")
    assert pa.keys() == pb.keys() and pa
    assert all(torch.allclose(pa[k], pb[k], atol=1e-4) for k in pa)

    # an FSDP checkpoint's optimizer state is keyed by name: a 1-process resume is refused
    with pytest.raises(UserError, match="saved under FSDP"):
        train(_storm(tmp_path / "two", suite, batch_size=4, max_steps=6), resume=True)


def test_unsupported_fsdp_settings_are_refused(tmp_path, monkeypatch):
    suite = tmp_path / "m.jsonl"
    cfg = tiny_config(tmp_path / "o", suite, "storm")
    cfg.targets.encoder = "frozen_copy"
    with pytest.raises(UserError, match="frozen_copy"):
        fsdp.check_supported(cfg)
    cfg = tiny_config(tmp_path / "o", suite, "storm")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(UserError, match="fsdp_offload_params"):
        fsdp.check_supported(cfg)
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "false")
    fsdp.check_supported(cfg)
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert fsdp.reshard_after_forward() is False
    monkeypatch.delenv("FSDP_RESHARD_AFTER_FORWARD")
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "NO_SHARD")
    with pytest.raises(UserError, match="NO_SHARD"):
        fsdp.reshard_after_forward()
