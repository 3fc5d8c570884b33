"""2-process CPU DDP (gloo, torchrun + the CLI) follows the 1-process loss trajectory."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from stormvl.config import to_dict
from stormvl.training.loop import train
from train_fixtures import free_port, make_suite, metric, tiny_config


def test_two_process_ddp_matches_one_process(tmp_path):
    suite = make_suite(tmp_path / "data")
    # same global batch: 1 x 4 here, 2 processes x 2 there; storm exercises the projector too
    train(tiny_config(tmp_path / "one", suite, "storm", batch_size=4, max_steps=3))
    cfg = to_dict(tiny_config(tmp_path / "two", suite, "storm", batch_size=2, max_steps=3))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "stormvl", "train", str(tmp_path / "two.yaml")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = metric(tmp_path / "one"), metric(tmp_path / "two")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (one, two)


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    """A real kill (SIGKILL, no cleanup) of a CLI run, then --resume: same loss curve."""
    import signal
    import time

    suite = make_suite(tmp_path / "data")
    kw = dict(max_steps=16, batch_size=2, every=2)
    train(tiny_config(tmp_path / "full", suite, "latent", **kw))
    cfg = to_dict(tiny_config(tmp_path / "cut", suite, "latent", **kw))
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "stormvl", "train", str(tmp_path / "cut.yaml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "cut" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (ckpts / "step-000004").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in ckpts.glob("step-*"))
    assert "step-000004" in done and "step-000016" not in done, done
    from stormvl.config import load_config
    from stormvl.training.config import TrainConfig

    train(load_config(TrainConfig, tmp_path / "cut.yaml"), resume=True)
    assert metric(tmp_path / "cut") == metric(tmp_path / "full")
