"""FSDP for the trainer: shard ``TrainModule`` with torch's ``fully_shard`` (FSDP2), gather
full states for checkpoints.

Why the loop shards the module itself instead of ``accelerator.prepare``: accelerate 1.15
switches to ``DistributedType.FSDP`` only on accelerators (CUDA, XPU, NPU, ...; see
``AcceleratorState.__init__``); on CPU an FSDP request (``accelerate launch --use_fsdp`` or an
``fsdp_plugin``) silently becomes plain DDP. Sharding here is one code path for CPU (gloo) and
GPU (nccl), so the CPU test exercises what a GPU run executes. accelerate still launches the
processes, picks the device and reduces metrics.

FSDP2 keeps parameter identity per module (a ``DTensor`` shard per rank), supports frozen and
trainable parameters in one group (the frozen vision tower) and a module called several times
before backward (the latent engine's K + 1 language-model passes over one KV cache): every
call all-gathers, every backward use reduce-scatters into the same sharded gradient.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from stormvl.errors import UserError


def _env_true(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("true", "1", "yes")


def requested(acc) -> bool:
    """FSDP was asked for: accelerate's FSDP type (GPU) or its launch flag (any device)."""
    return acc.distributed_type.name == "FSDP" or _env_true("ACCELERATE_USE_FSDP")


def reshard_after_forward() -> bool:
    """accelerate's setting: FSDP2 ``reshard_after_forward`` or FSDP1 sharding strategy.

    True (FULL_SHARD, ZeRO-3) frees gathered weights after each forward call and gathers them
    again in backward; False (SHARD_GRAD_OP, ZeRO-2) keeps them for backward.
    """
    value = os.environ.get("FSDP_RESHARD_AFTER_FORWARD")
    if value is None:
        value = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD")
    value = value.strip().upper()
    if value in ("TRUE", "1", "FULL_SHARD", "HYBRID_SHARD"):
        return True
    if value in ("FALSE", "0", "SHARD_GRAD_OP", "_HYBRID_SHARD_ZERO2"):
        return False
    raise UserError(f"FSDP sharding strategy {value!r} is not supported by stormvl train "
                    "(use FULL_SHARD / reshard_after_forward: true, or SHARD_GRAD_OP / false)")


def check_supported(cfg) -> None:
    """Refuse what this path does not do, before anything is built."""
    if cfg.targets.encoder == "frozen_copy" and cfg.method.uses_align:
        # the copy runs the tower outside TrainModule.forward, where FSDP never gathers the
        # root group's sharded weights
        raise UserError("targets.encoder=frozen_copy is not supported under FSDP; use DDP, or "
                        "targets.encoder=backbone / random_projection")
    refused = {
        "FSDP_OFFLOAD_PARAMS": "fsdp_offload_params",
        # transformers would then load real weights on rank 0 only; stormvl loads on every rank
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "fsdp_cpu_ram_efficient_loading",
        # the engine's own cache-safe checkpointing: model.gradient_checkpointing
        "FSDP_ACTIVATION_CHECKPOINTING": "fsdp_activation_checkpointing (use model.gradient_checkpointing)",
    }
    on = [name for env, name in refused.items() if _env_true(env)]
    if on:
        raise UserError(f"FSDP settings not supported by stormvl train: {', '.join(on)}; turn them off")


def block_names(module: nn.Module) -> set[str]:
    """Transformer block classes to shard one by one: HF's ``_no_split_modules`` (decoder
    layers and vision blocks) of every model inside ``module``."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def shard(module: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``module`` in place over all processes: each transformer block is its own FSDP
    unit (gathered only while it runs), everything else (embeddings, norms, lm head, merger,
    Stage-I projector) forms the root unit. Build the optimizer AFTER this call: parameters
    are replaced by DTensor shards."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    module.to(device)
    reshard = reshard_after_forward()
    names = block_names(module)
    blocks = [m for m in module.modules() if type(m).__name__ in names]
    if not blocks:
        raise UserError(f"FSDP: no transformer blocks ({sorted(names) or 'no _no_split_modules'}) "
                        "found to shard in this backbone")
    for m in blocks:
        fully_shard(m, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard)
    return module


def units(module: nn.Module) -> int:
    """How many FSDP units ``module`` holds (logged, and checked by the tests)."""
    from torch.distributed.fsdp import FSDPModule

    return sum(isinstance(m, FSDPModule) for m in module.modules())


_FULL = dict(full_state_dict=True, cpu_offload=True)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Consolidated parameters and buffers; collective (every rank calls), only rank 0 gets
    the tensors (on CPU), the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(**_FULL))


def optimizer_state(module: nn.Module, optimizer) -> dict:
    """Full optimizer state keyed by parameter name (rank 0; empty elsewhere); collective.
    Loadable with ``weights_only=True`` and independent of the number of processes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(**_FULL))


def load_optimizer_state(module: nn.Module, optimizer, state: dict) -> None:
    """Every rank passes the full state read from the checkpoint; each keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm over all shards (a plain tensor), clipped to ``max_norm``."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def split_state(full: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``full`` under ``prefix`` (a submodule's own keys)."""
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
