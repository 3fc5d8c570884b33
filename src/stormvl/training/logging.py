"""Run logs: a progress bar, ``metrics.jsonl`` and TensorBoard, main process only.

On resume the JSONL rows and TensorBoard events written after the resumed checkpoint (by the
killed run) are dropped, so the logged curve is the one an uninterrupted run would show.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from stormvl.data.manifest import JsonlAppender, read_jsonl_tolerant
from stormvl.io import write_text_atomic
from stormvl.training.config import TrainConfig

_SHOWN = ("loss", "ce", "align", "cos")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep rows with ``step <= step`` (atomic rewrite)."""
    rows = [r for r in read_jsonl_tolerant(path) if int(r.get("step", 0)) <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


class MetricsLog:
    """Writes one row per logged step; silent (and file-less) on non-main processes."""

    def __init__(self, cfg: TrainConfig, main: bool, start_step: int):
        self.main, self.every = main, cfg.log.every
        self.path = Path(cfg.out_dir) / "metrics.jsonl"
        self.t0, self.start = time.time(), start_step
        self._jsonl = self._tb = self._bar = None
        if not main:
            return
        if self.path.exists():
            truncate_metrics(self.path, start_step)
        self._jsonl = JsonlAppender(self.path)
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(cfg.out_dir) / "tensorboard"), purge_step=start_step + 1)
        if cfg.log.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=cfg.optim.max_steps, initial=start_step, desc="train",
                             dynamic_ncols=True, file=sys.stderr)

    def step(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        if self._bar is not None:
            shown = {k: f"{metrics[k]:.4f}" for k in _SHOWN if k in metrics}
            shown["samples/s"] = f"{metrics.get('samples_per_s', 0):.1f}"
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(step - self._bar.n)
        if step % self.every:
            return
        row = {"step": step, "time": round(time.time() - self.t0, 3), **metrics}
        self._jsonl.write(row)
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def warn(self, message: str) -> None:
        if self.main:
            if self._bar is not None:
                self._bar.write(f"warning: {message}", file=sys.stderr)
            else:
                print(f"warning: {message}", file=sys.stderr)

    def close(self) -> None:
        for h in (self._jsonl, self._tb, self._bar):
            if h is not None:
                h.close()
