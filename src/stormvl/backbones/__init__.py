"""Backbone adapters: one module per model family behind ``base.Backbone``.

``load_backbone`` loads a real checkpoint (or a stormvl checkpoint) from a local directory or
hub id; ``tiny.build_tiny`` builds the same architectures at test size, offline.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stormvl.backbones.base import (
    DEFAULT_MAX_LATENTS,
    LATENT_TOKENS,
    Backbone,
    Batch,
    Context,
    Encoded,
    Prompt,
    VideoInputs,
    VideoSettings,
    add_latent_tokens,
    read_stormvl_meta,
)
from stormvl.backbones.checkpoint_files import check_checkpoint_folder
from stormvl.backbones.qwen2_5_vl import Qwen2_5_VL
from stormvl.backbones.qwen3_vl import Qwen3_VL
from stormvl.errors import UserError

ADAPTERS: dict[str, type[Backbone]] = {"qwen2_5_vl": Qwen2_5_VL, "qwen3_vl": Qwen3_VL}


def load_backbone(
    path_or_id: str | Path,
    family: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    video: VideoSettings | None = None,
    trust_remote_code: bool = False,
    weights: bool = True,
) -> Backbone:
    """``from_pretrained`` a Qwen-VL checkpoint and wrap it in its family's adapter.

    Args:
        path_or_id: local directory or hub id.
        family: expected family; defaults to the config's ``model_type``.
        dtype / device: where the weights go.
        video: frame-resolution settings; default = the checkpoint's stormvl.json, else the
            family default.
        trust_remote_code: passed through; off unless the user asks.
        weights: False builds the model from its config on the meta device instead (no
            weight file is read, no memory is taken; ``dtype`` / ``device`` are ignored): the
            tokenizer, special ids, patch / merge sizes and positions are the checkpoint's,
            so ``preprocess_video`` and ``encode`` give what the loaded model's would. For
            processes that only prepare inputs (the server's preparation workers).
    Raises:
        UserError: unsupported architecture, a checkpoint of another family, pickle or
            damaged weights, weights that do not fit the config (``check_checkpoint_folder``,
            ``Backbone.load_weights``).
    """
    from transformers import AutoConfig, AutoTokenizer

    if Path(path_or_id).is_dir():  # config, weight files: refused before transformers runs
        check_checkpoint_folder(Path(path_or_id), sorted(ADAPTERS))
    try:
        config = AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(f"{path_or_id}: its config needs the checkpoint's own Python code, "
                            f"which stormvl never runs; stormvl loads {' and '.join(sorted(ADAPTERS))} "
                            "checkpoints") from None
        raise UserError(f"{path_or_id}: cannot load a model config ({' '.join(str(exc).split())})") from None
    model_type = config.model_type
    if model_type not in ADAPTERS:
        raise UserError(f"{path_or_id}: model_type {model_type!r} is not supported; "
                        f"supported: {sorted(ADAPTERS)}")
    if family is not None and family != model_type:
        raise UserError(f"{path_or_id}: a {model_type} checkpoint, but backbone {family!r} was asked for")
    meta = read_stormvl_meta(path_or_id) if Path(path_or_id).is_dir() else None
    if meta is not None and meta.get("backbone") != model_type:
        raise UserError(f"{path_or_id}: stormvl.json names backbone {meta.get('backbone')!r} "
                        f"but the weights are {model_type}")
    cls = ADAPTERS[model_type]
    if weights:
        model = cls.load_weights(path_or_id, dtype, trust_remote_code).to(device).eval()
    else:
        with torch.device("meta"):
            model = cls.model_class()._from_config(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    if video is None and meta is not None:
        video = VideoSettings.from_dict(meta.get("video"))
    max_latents = int(meta.get("max_latents", DEFAULT_MAX_LATENTS)) if meta else DEFAULT_MAX_LATENTS
    return cls(model, tokenizer, video=video, max_latents=max_latents)


__all__ = [
    "ADAPTERS", "DEFAULT_MAX_LATENTS", "LATENT_TOKENS", "Backbone", "Batch", "Context", "Encoded",
    "Prompt", "VideoInputs", "VideoSettings", "add_latent_tokens", "load_backbone",
    "read_stormvl_meta",
]
