"""What a local checkpoint folder must hold before stormvl lets transformers open it.

transformers' own errors for a bad folder are tracebacks (SafetensorError, UnpicklingError)
or several lines suggesting ``trust_remote_code``, and a pickle can run code when it is
loaded; these checks read only names, config.json and safetensors headers, and name the file.
"""

from __future__ import annotations

from pathlib import Path

from stormvl.errors import UserError
from stormvl.io import read_json

MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # one file, or shards
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # LoRA checkpoints
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# resume state: weights_only torch files that are not weights (training/checkpoint.py)
_RESUME_STATE = ("trainer_state", "rng_rank")
CONVERT_HINT = ("convert it once, where you trust the file: python -c \"from transformers import "
                "AutoModelForImageTextToText as M; M.from_pretrained('{d}').save_pretrained('{d}')\" "
                "writes model.safetensors beside it")


def check_safetensors(f: Path) -> None:
    """Refuse a safetensors file whose header does not parse or that does not hold every
    tensor its header lists (a truncated copy); only the header is read.

    Raises:
        UserError: naming the file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(f), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{f}: not a complete safetensors file ({exc}); the copy is truncated "
                        "or corrupt") from None


def check_checkpoint_folder(folder: Path, supported: list[str]) -> None:
    """Refuse, before transformers opens anything, a local checkpoint stormvl must not load.

    Args:
        folder: the checkpoint folder (config.json and the weights).
        supported: the model types stormvl has adapters for.
    Raises:
        UserError: a config of an unsupported (or remote-code) model, pickle weights only
            (even beside other safetensors files such as a Stage-I projector), a sharded
            index naming a missing shard, or a truncated / corrupt safetensors file.
    """
    cfg_file = folder / "config.json"
    cfg = read_json(cfg_file, "model config")
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type not in supported:
        code = (" and ships its own Python code (auto_map), which stormvl never runs"
                if isinstance(cfg, dict) and cfg.get("auto_map") else "")
        raise UserError(f"{cfg_file}: model_type {model_type!r} is not supported{code}; "
                        f"stormvl loads {' and '.join(supported)} checkpoints")
    check_weight_files(folder)


def check_weight_files(folder: Path) -> None:
    """The weight files half of ``check_checkpoint_folder`` (LoRA adapter folders have no
    config.json): safetensors weights present and complete, never pickles only."""
    adapter = (folder / "adapter_config.json").is_file()
    names = (ADAPTER_WEIGHTS,) if adapter else MODEL_WEIGHTS
    found = [folder / n for n in names if (folder / n).is_file()]
    if not found:
        pickles = sorted(f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES
                         and not f.name.startswith(_RESUME_STATE))
        if pickles:
            raise UserError(f"{pickles[0]}: pickle weights; stormvl loads weights only from "
                            f"safetensors (unpickling can run code); {CONVERT_HINT.format(d=folder)}")
        raise UserError(f"{folder}: no model weights ({' or '.join(names)})")
    if found[0].name.endswith(".index.json"):
        shards = read_json(found[0]).get("weight_map")
        if not isinstance(shards, dict):
            raise UserError(f"{found[0]}: no 'weight_map' naming the weight shards")
        for name in sorted(set(shards.values())):
            if not (folder / name).is_file():
                raise UserError(f"{found[0]}: names shard {name}, which is not in {folder}")
    for f in sorted(folder.glob("*.safetensors")):  # shards, adapters, a Stage-I projector
        check_safetensors(f)
