"""Build the backbone a run trains: source, stage-1 checks, freezing, LoRA, export.

Kept apart from the loop so the loop reads top to bottom and these rules are testable alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from stormvl.config import to_dict
from stormvl.errors import UserError
from stormvl.io import read_json
from stormvl.training.checkpoint import read_meta
from stormvl.training.config import TrainConfig
from stormvl.training.targets import vision_modules

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Built:
    """The backbone, and its peft wrapper when the run trains LoRA adapters."""

    backbone: object
    peft_model: object | None = None


def parse_tiny(source: str) -> tuple[str, str] | None:
    """"tiny:qwen2_5_vl[:small]" -> (family, size); None for real checkpoints."""
    if not source.startswith("tiny:"):
        return None
    parts = source.split(":")
    return parts[1], parts[2] if len(parts) > 2 else "tiny"


def config_family(cfg: TrainConfig) -> str | None:
    """The backbone family a config asks for, when it can be known without loading."""
    tiny = parse_tiny(cfg.model.backbone)
    if tiny:
        return tiny[0]
    if cfg.model.family:
        return cfg.model.family
    cfg_file = Path(cfg.model.backbone) / "config.json"
    if cfg_file.is_file():
        return read_json(cfg_file).get("model_type")
    return None


def check_stage1(cfg: TrainConfig) -> dict:
    """Refuse a missing stage-1 checkpoint, or one of another method, backbone or K.

    Returns:
        the stage-1 checkpoint's stormvl.json.
    """
    path = cfg.method.stage1_checkpoint
    meta = read_meta(path)  # missing folder / file -> UserError naming it
    where = f"method.stage1_checkpoint={path}"
    if meta.get("method") != "storm" or meta.get("stage") != 1:
        raise UserError(f"{where}: a {meta.get('method')} (stage {meta.get('stage')}) checkpoint, "
                        "not storm stage 1")
    fam = config_family(cfg)
    if fam is not None and meta.get("backbone") != fam:
        raise UserError(f"{where}: trained on backbone {meta.get('backbone')!r}, this run uses {fam!r}")
    if not same_base(meta, path, cfg.model.backbone):
        raise UserError(f"{where}: trained from {meta.get('base')!r}, this run names "
                        f"model.backbone={cfg.model.backbone!r}")
    if meta.get("k") != cfg.method.k:
        raise UserError(f"{where}: trained with K={meta.get('k')}, this run has method.k={cfg.method.k}")
    if bool(meta.get("bottleneck")) != cfg.method.bottleneck:
        raise UserError(f"{where}: trained with bottleneck={bool(meta.get('bottleneck'))}, this run "
                        f"has method.bottleneck={cfg.method.bottleneck}")
    return meta


def _load(source: str, cfg: TrainConfig):
    from stormvl.backbones import VideoSettings, load_backbone
    from stormvl.backbones.tiny import build_tiny

    video = VideoSettings(min_pixels=cfg.video.min_pixels, max_pixels=cfg.video.max_pixels)
    tiny = parse_tiny(source)
    if tiny:
        bb = build_tiny(family=tiny[0], size=tiny[1], seed=cfg.model.init_seed)
        bb.model.to(DTYPES[cfg.model.dtype])
        bb.video = video
        return bb
    # load_backbone refuses pickle weights (check_checkpoint_folder): another safetensors
    # file in the folder, such as a Stage-I projector, does not stand in for the model's
    return load_backbone(source, family=cfg.model.family, dtype=DTYPES[cfg.model.dtype],
                         video=video, trust_remote_code=cfg.model.trust_remote_code)


def lora_target_regex(names: list[str]) -> str:
    """peft regex: the named projections of the language model only (not the vision tower,
    whose MLP reuses the names gate_proj / up_proj / down_proj)."""
    return rf"^(?!.*visual).*\.({'|'.join(names)})$"


def build_model(cfg: TrainConfig, resume_from: Path | None = None) -> Built:
    """The backbone for this run, frozen and wrapped as configured.

    Source: ``resume_from`` (a checkpoint of this run) > the stage-1 checkpoint (storm stage 2)
    > ``model.backbone``. LoRA checkpoints hold adapters only; they are re-applied on the base.
    """
    lora = cfg.model.lora.enabled
    if cfg.method.name == "storm" and cfg.method.stage == 2:
        check_stage1(cfg)
    source = cfg.model.backbone
    if cfg.method.name == "storm" and cfg.method.stage == 2 and not lora:
        source = cfg.method.stage1_checkpoint
    if resume_from is not None and not lora:
        source = str(resume_from)
    bb = _load(source, cfg)
    for p in bb.model.parameters():
        p.requires_grad_(True)
    if cfg.model.freeze_vision:
        vision_modules(bb).requires_grad_(False)
    peft_model = None
    if lora:
        peft_model = _apply_lora(bb, cfg, resume_from)
    if cfg.model.gradient_checkpointing:
        # per language-model call, cache-safe (HF's own checkpointing drops the latent
        # chain's KV cache; the engine refuses it)
        bb.checkpoint_slices = True
    bb.bottleneck = cfg.method.bottleneck
    return Built(bb, peft_model)


def _apply_lora(bb, cfg: TrainConfig, resume_from: Path | None):
    """Inject LoRA layers into ``bb.model`` in place (the adapter keeps its attribute paths)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from stormvl.backbones.checkpoint_files import check_weight_files

    stage1 = cfg.method.stage1_checkpoint if cfg.method.name == "storm" and cfg.method.stage == 2 else None
    start = resume_from or (Path(stage1) if stage1 else None)
    if start is not None:
        check_weight_files(Path(start))  # adapter_model.safetensors, never a pickled .bin
        return PeftModel.from_pretrained(bb.model, str(start), is_trainable=True)
    lc = cfg.model.lora
    conf = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                      target_modules=lora_target_regex(lc.target_modules))
    return get_peft_model(bb.model, conf)


def save_model(built: Built, path: Path, meta: dict, state_dict: dict | None = None) -> None:
    """Weights (full HF model, or LoRA adapters) + tokenizer + stormvl.json into ``path``.

    ``state_dict``: the HF model's consolidated weights when the live parameters are shards
    (FSDP); by default the model's own.
    """
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar inside the run's bar
    try:
        _save_model(built, path, meta, state_dict)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _save_model(built: Built, path: Path, meta: dict, state_dict: dict | None) -> None:
    bb = built.backbone
    if built.peft_model is None and state_dict is None:
        bb.save(path, meta)
        return
    path.mkdir(parents=True, exist_ok=True)
    if built.peft_model is None:
        bb.model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
    else:  # peft keys its own state dict under base_model.model.
        sd = None if state_dict is None else {f"base_model.model.{k}": v for k, v in state_dict.items()}
        built.peft_model.save_pretrained(str(path), state_dict=sd, safe_serialization=True)
    bb.save_extras(path, meta)


def export_merged(checkpoint: str | Path, out: str | Path) -> Path:
    """Merge a LoRA checkpoint's adapters into its base and save a plain HF checkpoint.

    The result loads with ``<Model>ForConditionalGeneration.from_pretrained`` alone and keeps
    the tokenizer (with the latent tokens), chat template and stormvl.json (lora: false).

    Raises:
        UserError: not a stormvl checkpoint, or one without LoRA adapters.
    """
    from peft import PeftModel

    from stormvl.backbones.checkpoint_files import check_weight_files
    from stormvl.config import from_dict

    checkpoint = Path(checkpoint)
    meta = read_meta(checkpoint)
    if not (checkpoint / "adapter_config.json").is_file():
        raise UserError(f"{checkpoint}: no adapter_config.json; only LoRA checkpoints need export "
                        "(full checkpoints already load with from_pretrained)")
    check_weight_files(checkpoint)
    cfg = from_dict(TrainConfig, meta["config"], f"{checkpoint}/stormvl.json config")
    bb = _load(cfg.model.backbone, cfg)
    merged = PeftModel.from_pretrained(bb.model, str(checkpoint)).merge_and_unload()
    bb.model = merged
    keep = {k: v for k, v in meta.items() if k not in ("stormvl_version", "backbone", "video", "max_latents")}
    keep["lora"] = False
    keep["exported_from"] = str(checkpoint)
    return bb.save(Path(out), keep)  # processor files from the run's own settings


def same_base(meta: dict, checkpoint: str | Path, backbone: str) -> bool:
    """Whether the checkpoint at ``checkpoint`` was trained from ``backbone``: the same name,
    or the same local folder seen from the checkpoint (a demo or run tree that was copied or
    moved as a whole keeps its checkpoints' starts)."""
    if meta.get("base") in (None, backbone):
        return True
    rel = meta.get("base_from_here")
    return bool(rel) and Path(backbone).is_dir() and \
        (Path(checkpoint) / rel).resolve() == Path(backbone).resolve()


def run_meta(cfg: TrainConfig, step: int, checkpoint: Path | None = None,
             prompt: dict | None = None) -> dict:
    """What stormvl.json records about the run beside the backbone's own fields.

    ``checkpoint``: where it is saved; a local base is then also recorded relative to it.
    ``prompt``: the layout (``data.prompt``) with, for ``bare``, the question it leaves out.
    """
    base = Path(cfg.model.backbone)
    rel = os.path.relpath(base.resolve(), Path(checkpoint).resolve()) if checkpoint and base.is_dir() else None
    return {
        "method": cfg.method.name,
        "stage": cfg.method.stage if cfg.method.name == "storm" else None,
        "k": cfg.method.num_latents,
        "bottleneck": cfg.method.bottleneck,
        "internalize_at": list(cfg.method.internalize_at),
        "base": cfg.model.backbone,
        "base_from_here": rel,
        "lora": cfg.model.lora.enabled,
        "step": step,
        "video_config": to_dict(cfg.video),
        "prompt": prompt or {"layout": cfg.data.prompt},
        "config": to_dict(cfg),
    }
