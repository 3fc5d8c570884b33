"""Checkpoints: HF-format weights + stormvl.json + the state needed to resume exactly.

Layout of ``<out_dir>/checkpoints/step-000120/``::

    model.safetensors, config.json, tokenizer files, stormvl.json   (Backbone.save)
      (LoRA runs: adapter_model.safetensors + adapter_config.json instead of the full model)
    align_projector.safetensors   Stage-I projector, when the run has one
    trainer_state.pt              optimizer, scheduler, step, data position, bad-media counts
                                  (under FSDP the optimizer state is gathered, keyed by name)
    rng_rank<r>.pt                torch / numpy / python RNG of each process
    config.yaml                   the resolved run config

The folder is assembled under a temporary name and renamed into place, so a kill mid-write
never leaves a checkpoint that loads wrong: ``latest_checkpoint`` only sees finished ones.
States load with ``torch.load(weights_only=True)`` and weights only from safetensors.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stormvl.errors import UserError
from stormvl.io import read_json

_STEP_DIR = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.pt"
PROJECTOR = "align_projector.safetensors"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / "checkpoints" / f"step-{step:06d}"


def tmp_dir(root: str | Path, step: int) -> Path:
    return Path(root) / "checkpoints" / f".step-{step:06d}.partial"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Finished checkpoints under ``root`` (partial ones have another name), oldest first."""
    d = Path(root) / "checkpoints"
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / TRAINER_STATE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def prune(root: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` finished checkpoints, and stale partial ones."""
    found = list_checkpoints(root)
    for _, p in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(p, ignore_errors=True)


def clear_partial(root: str | Path) -> None:
    """Remove leftovers of a checkpoint write that was killed."""
    d = Path(root) / "checkpoints"
    if d.is_dir():
        for p in d.glob(".step-*.partial*"):
            shutil.rmtree(p, ignore_errors=True)


# --- RNG -----------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may touch, in weights_only-loadable types."""
    np_state = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": torch.tensor(py[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_gauss"][0], state["numpy_gauss"][1]))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- trainer state -------------------------------------------------------------------------


@dataclass
class TrainerState:
    """Where the run is: optimizer steps done, micro-batches consumed, media failures."""

    step: int = 0
    micro_batches: int = 0
    samples_seen: int = 0
    bad_media: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def write_trainer_state(path: Path, state: TrainerState, optimizer: dict, scheduler, extra: dict | None = None) -> None:
    """``optimizer`` is the optimizer's state dict: ``optimizer.state_dict()`` (1 process, DDP;
    keyed by parameter index) or FSDP's full one (keyed by parameter name,
    ``optimizer_format: "fsdp"`` in ``extra``). ``extra`` holds plain data only (str / int /
    float / dict / list), so the file stays loadable with ``weights_only=True``."""
    torch.save(
        {"trainer": state.to_dict(), "optimizer": optimizer,
         "scheduler": scheduler.state_dict(), **(extra or {})},
        path / TRAINER_STATE,
    )


def _load_state(f: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a resume-state file, its failures as one line.

    Raises:
        UserError: the file holds pickled objects beyond tensors and plain data (refused
            unread: unpickling can run code), or is truncated / corrupt.
    """
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the bytes are, the file is unusable
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and code:
            why = (f"it names Python code ({code.group(1)}), which stormvl never unpickles "
                   "(weights_only)")
        else:
            why = "truncated, corrupt or not a torch state file"
    else:
        if isinstance(state, dict):
            return state
        why = f"holds a {type(state).__name__}, not a stormvl state"
    raise UserError(f"{f}: {why}; delete the folder {f.parent} to resume from the checkpoint "
                    "before it")


def read_trainer_state(path: Path) -> dict[str, Any]:
    """Load ``trainer_state.pt`` with ``weights_only=True`` (no pickled code runs)."""
    f = Path(path) / TRAINER_STATE
    if not f.is_file():
        raise UserError(f"{path}: not a stormvl training checkpoint (no {TRAINER_STATE})")
    return _load_state(f)


def write_rng(path: Path, rank: int) -> None:
    torch.save(rng_state(), path / f"rng_rank{rank}.pt")


def read_rng(path: Path, rank: int) -> dict[str, Any] | None:
    f = Path(path) / f"rng_rank{rank}.pt"
    return _load_state(f) if f.is_file() else None


def read_meta(path: str | Path) -> dict[str, Any]:
    """``stormvl.json`` of a checkpoint folder.

    Raises:
        UserError: the folder or its stormvl.json is missing or unreadable.
    """
    f = Path(path) / "stormvl.json"
    if not Path(path).is_dir():
        raise UserError(f"{path}: checkpoint folder not found")
    if not f.is_file():
        raise UserError(f"{path}: no stormvl.json (not a stormvl checkpoint)")
    return read_json(f)
