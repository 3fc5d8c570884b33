"""``stormvl eval`` data parallel: 2 CPU processes (gloo, torchrun) give the 1-process result."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import fixtures_tasks as ft
from stormvl.backbones.tiny import build_tiny
from stormvl.cli import main
from test_eval import save_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    ckpt = save_checkpoint(build_tiny("qwen2_5_vl", "tiny", seed=0), tmp_path / "ckpt", "latent")
    data = ft.write_tempcompass(tmp_path / "tc")
    args = ["eval", "--model", str(ckpt), "--benchmark", "tempcompass", "--data", str(data),
            "--batch-size", "1", "--max-new-tokens", "3", "--no-progress", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "stormvl", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["items"] == two["items"] and one["n_items"] == two["n_items"] == 8
    assert sorted((tmp_path / "two").glob("*.rank*.jsonl")) == []  # shards merged away
    rows = (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()
    assert len({json.loads(r)["id"] for r in rows}) == len(rows) == 8
    assert (one["reproducibility"]["frame_indices_sha256"]
            == two["reproducibility"]["frame_indices_sha256"])
