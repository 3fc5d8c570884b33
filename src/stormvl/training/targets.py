"""Thought video -> K fixed target vectors for Stage-I alignment, with an on-disk cache.

Why *fixed* encoders: in the project's first pilot, aligning latents to the
model's own still-training vision tower collapsed both to one direction, while a fixed random
projection of thought-video pixels gave the largest gain. So every encoder here is frozen:

- ``RandomProjectionEncoder``: frames area-downsampled to ``pixels x pixels``, cut into
  ``grid x grid`` cells, each cell projected by a seeded Gaussian matrix (the tiny default).
- ``VisionTowerEncoder``: a backbone's vision tower + merger under ``no_grad``; the frozen
  pretrained tower (``backbone``) or a deep copy taken after warm-up (``frozen_copy``).

An encoder returns time-grouped features ``(T', N, D)`` (T' time groups of N spatial tokens);
``reduce_targets`` turns them into ``(K, P, D)``: K contiguous time segments (latent k
"imagines" segment k), each mean-pooled (P = 1) or pooled into P spatial groups (``multi``,
finer targets: over-pooled targets were blamed for collapsed latents in published
latent-visual reasoning work).

The cache key hashes the thought video's *bytes*, the encoder's *weights* and the reduction,
and the stored file repeats those parts in its metadata, so a stale entry (video or weights
changed) is never found and a foreign entry (a file copied under another name) is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from stormvl.data.manifest import Sample, resolve_media
from stormvl.data.video import read_clip
from stormvl.errors import ManifestError, UserError, VideoError
from stormvl.training.config import TargetConfig

# --- hashing -------------------------------------------------------------------------------

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (memoised on path, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def module_hash(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --- encoders ------------------------------------------------------------------------------


class RandomProjectionEncoder:
    """Fixed random projection of downsampled pixels, one vector per (frame, grid cell)."""

    name = "random_projection"

    def __init__(self, dim: int, pixels: int = 16, grid: int = 2, seed: int = 0):
        if pixels % grid:
            pixels = (pixels // grid) * grid  # whole cells
        self.dim, self.pixels, self.grid, self.seed = dim, pixels, grid, seed
        cell = pixels // grid
        gen = torch.Generator().manual_seed(seed)
        fan_in = 3 * cell * cell
        self.weight = torch.randn(fan_in, dim, generator=gen) / fan_in**0.5  # (3*c*c, D)
        h = hashlib.sha256(self.weight.numpy().tobytes())
        h.update(f"{pixels}:{grid}".encode())
        self._hash = h.hexdigest()

    def weights_hash(self) -> str:
        return self._hash

    def encode(self, frames: np.ndarray, timestamps: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, grid*grid, D) float32."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(self.pixels, self.pixels), mode="area") - 0.5  # (T,3,p,p)
        t, g, c = x.shape[0], self.grid, self.pixels // self.grid
        cells = x.reshape(t, 3, g, c, g, c).permute(0, 2, 4, 1, 3, 5).reshape(t, g * g, 3 * c * c)
        return cells @ self.weight  # (T, g*g, D)


class VisionTowerEncoder:
    """A frozen vision tower + merger of a backbone (``encode_vision``), run under no_grad.

    Args:
        backbone: the adapter (``preprocess_video`` / ``encode_vision``).
        name: "backbone" (the live, frozen tower) or "frozen_copy".
        tower: the module whose weights define the targets (hashed for the cache key).
        encode_fn: ``list[VideoInputs] -> list[Tensor (n_tokens, D)]``; defaults to
            ``backbone.encode_vision``.
    """

    def __init__(self, backbone, name: str, tower: nn.Module, encode_fn: Callable | None = None):
        self.backbone, self.name, self.tower = backbone, name, tower
        self.encode_fn = encode_fn or backbone.encode_vision
        self.dim = backbone.hidden_size
        self._hash = module_hash(tower)

    def weights_hash(self) -> str:
        return self._hash

    @torch.no_grad()
    def encode(self, frames: np.ndarray, timestamps: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (grid_t, tokens per group, D) float32."""
        vi = self.backbone.preprocess_video(frames, timestamps)
        feats = self.encode_fn([vi])[0].float().cpu()  # (n_tokens, D)
        grid_t = int(vi.grid_thw[0])
        return feats.reshape(grid_t, feats.shape[0] // grid_t, feats.shape[-1])


def vision_modules(backbone) -> nn.Module:
    """The vision tower (+ merger, which lives inside it in Qwen-VL) of a backbone."""
    model = backbone.model
    for path in ("model.visual", "visual"):
        mod = model
        try:
            for part in path.split("."):
                mod = getattr(mod, part)
            return mod
        except AttributeError:
            continue
    raise ValueError(f"cannot find the vision tower of {type(model).__name__}")


def frozen_copy_encoder(backbone) -> VisionTowerEncoder:
    """Snapshot the current vision tower (after warm-up) as a fixed target encoder.

    The live tower is swapped for the copy only while encoding, so the copy never trains.
    """
    live = vision_modules(backbone)
    snap = copy.deepcopy(live).eval().requires_grad_(False)

    def encode_fn(videos):
        parent, attr = _parent_of(backbone.model, live)
        setattr(parent, attr, snap)
        try:
            return backbone.encode_vision(videos)
        finally:
            setattr(parent, attr, live)

    return VisionTowerEncoder(backbone, "frozen_copy", snap, encode_fn)


def _parent_of(root: nn.Module, child: nn.Module) -> tuple[nn.Module, str]:
    for _name, mod in root.named_modules():
        for attr, sub in mod.named_children():
            if sub is child:
                return mod, attr
    raise ValueError("module not found under the model")


def build_encoder(cfg: TargetConfig, backbone) -> RandomProjectionEncoder | VisionTowerEncoder:
    """The configured encoder (``frozen_copy`` is built by the loop after warm-up)."""
    if cfg.encoder == "random_projection":
        dim = cfg.dim or backbone.hidden_size
        return RandomProjectionEncoder(dim, cfg.pixels, cfg.grid, cfg.seed)
    if cfg.encoder == "backbone":
        return VisionTowerEncoder(backbone, "backbone", vision_modules(backbone))
    return frozen_copy_encoder(backbone)


# --- reduction -----------------------------------------------------------------------------


def segment_bounds(length: int, k: int) -> list[tuple[int, int]]:
    """K contiguous [lo, hi) time segments covering ``length`` groups (reused when short)."""
    out = []
    for i in range(k):
        lo = (i * length) // k
        hi = max(lo + 1, ((i + 1) * length) // k)
        out.append((lo, min(hi, length)))
    return out


def reduce_targets(feats: torch.Tensor, k: int, reduction: str = "mean", per_step: int = 1) -> torch.Tensor:
    """Pool time-grouped features into K target steps.

    Args:
        feats: (T', N, D) features of T' time groups with N spatial tokens each.
        reduction: "mean" (each segment -> 1 vector) or "multi" (-> ``per_step`` vectors,
            one per contiguous group of spatial tokens; time-then-space tokens when N is
            smaller than ``per_step``).

    Returns:
        (K, P, D) with P = 1 for "mean", ``per_step`` for "multi".
    """
    steps = []
    for lo, hi in segment_bounds(feats.shape[0], k):
        seg = feats[lo:hi]  # (S, N, D)
        if reduction == "mean":
            steps.append(seg.mean(dim=(0, 1))[None])  # (1, D)
            continue
        if seg.shape[1] >= per_step:
            groups = torch.tensor_split(seg, per_step, dim=1)  # P x (S, n, D)
            steps.append(torch.stack([g.mean(dim=(0, 1)) for g in groups]))
        else:
            flat = seg.reshape(-1, seg.shape[-1])  # (S*N, D)
            if flat.shape[0] < per_step:
                raise UserError(
                    f"targets.per_step={per_step} is more than the {flat.shape[0]} encoder "
                    "tokens in one segment; lower per_step or raise targets.frames"
                )
            steps.append(torch.stack([g.mean(0) for g in torch.tensor_split(flat, per_step)]))
    return torch.stack(steps)  # (K, P, D)


# --- cache ---------------------------------------------------------------------------------


@dataclass
class TargetCache:
    """One safetensors file per (thought video, encoder, reduction) under ``root``."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    @staticmethod
    def key_parts(video_hash: str, encoder: str, encoder_hash: str, spec: dict) -> dict[str, str]:
        return {
            "video_sha256": video_hash,
            "encoder": encoder,
            "encoder_sha256": encoder_hash,
            "reduction": json.dumps(spec, sort_keys=True),
        }

    @staticmethod
    def key(parts: dict[str, str]) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, parts: dict[str, str]) -> torch.Tensor | None:
        """The cached (K, P, D) targets, or None if absent, unreadable or not these parts."""
        p = self.path(self.key(parts))
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="pt") as fh:
                if fh.metadata() != parts:
                    return None  # foreign entry: copied or renamed from another key
                return fh.get_tensor("targets")
        except Exception:  # a torn or corrupt file is a miss, rebuilt by the caller
            return None

    def put(self, parts: dict[str, str], targets: torch.Tensor) -> Path:
        """Write atomically (temp file + rename)."""
        p = self.path(self.key(parts))
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        save_file({"targets": targets.detach().float().cpu().contiguous()}, str(tmp), metadata=parts)
        os.replace(tmp, p)
        return p


@dataclass
class TargetReport:
    """Cache behaviour and failures of one ``build_targets`` pass."""

    parts: dict[str, dict[str, str]] = field(default_factory=dict)  # sample id -> cache parts
    hits: int = 0
    built: int = 0
    missing: int = 0  # samples without a thought video
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def build_targets(
    samples: list[Sample],
    media_root: str | Path,
    encoder,
    cache: TargetCache,
    cfg: TargetConfig,
    k: int,
    timeout_s: float = 30.0,
) -> TargetReport:
    """Make sure every sample's targets are cached; returns the cache parts per sample id.

    A thought video that cannot be read is reported (file, reason) and that sample trains
    without alignment; the caller decides whether the failure rate stops the run.
    """
    spec = {"k": k, "reduction": cfg.reduction, "per_step": cfg.per_step if cfg.reduction == "multi" else 1,
            "frames": cfg.frames}
    enc_hash = encoder.weights_hash()
    report = TargetReport()
    for s in samples:
        if not s.thought_video:
            report.missing += 1
            continue
        try:
            path = resolve_media(media_root, s.thought_video, f"sample {s.id}: thought_video")
            if not path.is_file():
                raise VideoError(f"{path}: thought video file not found")
            parts = TargetCache.key_parts(file_hash(path), encoder.name, enc_hash, spec)
            if cache.get(parts) is not None:
                report.hits += 1
            else:
                clip = read_clip(path, num_frames=cfg.frames, timeout_s=timeout_s)
                feats = encoder.encode(clip.frames, clip.timestamps)
                cache.put(parts, reduce_targets(feats, k, cfg.reduction, cfg.per_step))
                report.built += 1
            report.parts[s.id] = parts
        except (VideoError, ManifestError, OSError) as exc:  # bad media; config errors propagate
            report.failed.append((str(s.thought_video), str(exc)))
    return report
