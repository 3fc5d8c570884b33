"""Training data: samples -> decoded clips (in DataLoader workers) -> collated batches.

Three properties the loop relies on:

1. Bad media never stops a worker and is never dropped silently: a missing, corrupt or
   too-slow video becomes a ``Skipped(file, reason)`` that travels with the batch; the loop
   counts them and stops above ``data.max_bad_fraction``.
2. The sampler is a pure function of (seed, micro-batch number): resuming at micro-batch b
   skips everything before it by index arithmetic, without decoding a single frame, and the
   data order after resuming equals the uninterrupted run's.
3. Under DDP each process takes its slice of the same global micro-batch, so N processes with
   batch B see exactly the samples one process with batch N x B sees.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from stormvl.data.clip_cache import ClipReader
from stormvl.data.manifest import Sample, read_manifest, resolve_media
from stormvl.data.video import window_frames
from stormvl.errors import ConfigError, UserError
from stormvl.training.config import DataConfig, VideoConfig
from stormvl.training.importers import import_llamafactory, import_video_r1
from stormvl.training.targets import TargetCache
from stormvl.training.video_settings import (
    TokenCounter,
    VideoPlan,
    plan_video,
    split_budget,
    wanted_frames,
)


def load_samples(cfg: DataConfig) -> tuple[list[Sample], Path, str]:
    """Read the configured training file into samples.

    Returns:
        (samples, media root, a one-line summary incl. importer skip counts)

    Raises:
        UserError: missing file, malformed rows (file + row + field named), no samples left.
    """
    if cfg.format == "stormvl":
        samples, note = read_manifest(cfg.train), ""
        base = Path(cfg.train).parent
    elif cfg.format == "llamafactory":
        rep = import_llamafactory(cfg.train, cfg.dataset_info)
        samples, note = rep.samples, f" ({rep.summary()})"
        base = Path(cfg.dataset_info).parent if cfg.dataset_info else Path(cfg.train).parent
    else:
        rep = import_video_r1(cfg.train)
        samples, note = rep.samples, f" ({rep.summary()})"
        base = Path(cfg.train).parent
    if cfg.split is not None:
        samples = [s for s in samples if s.split in (None, cfg.split)]
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    if not samples:
        raise UserError(f"{cfg.train}: no training samples (split={cfg.split!r}){note}")
    root = Path(cfg.media_root) if cfg.media_root else base
    return samples, root, f"{len(samples)} samples from {cfg.train}{note}"


def plan_clips(videos: list[tuple[int, int, int, int]], video: VideoConfig, count: TokenCounter,
               temporal_patch: int) -> list[VideoPlan]:
    """Plans for one sample's videos ((height, width, wanted frames, frames available) each,
    input video first, an oracle's thought video second) sharing the sample's visual-token
    budget; a clip with fewer frames than wanted is planned at the frames it has.

    Training and evaluation both call this, so a checkpoint is evaluated with exactly the
    frame counts and pixel bounds it was trained with.
    """
    shares = split_budget(video.max_visual_tokens, [w for _, _, w, _ in videos])
    return [plan_video(h, w, want, video, count, temporal_patch, share, available)
            for (h, w, want, available), share in zip(videos, shares, strict=True)]


# --- items ---------------------------------------------------------------------------------


@dataclass
class Loaded:
    """One decoded sample, before the backbone-specific preparation."""

    sample: Sample
    frames: np.ndarray | None  # (T, H, W, 3) uint8 input video; None once ``media`` is kept
    timestamps: np.ndarray  # (T,) seconds of the frames actually sampled
    plan: VideoPlan
    thought_frames: np.ndarray | None = None  # oracle: (T', H', W', 3) appended evidence
    thought_timestamps: np.ndarray | None = None
    thought_plan: VideoPlan | None = None
    # which text the sampler asked for: rationale sentences dropped (the latent curriculum,
    # ``method.internalize_at``); None = the method's plain target
    variant: int | None = None
    # what ``prepare_media`` made of the clips (the tower's pixel inputs): no text variant
    # changes it, so a remembered sample meets a new variant with tokenisation alone
    media: Any = None


@dataclass
class Item:
    index: int
    sample_id: str
    features: Any  # what the prepare hook made (e.g. the adapter's Encoded)
    target: torch.Tensor | None  # (K, P, D) thought-video targets, if any


@dataclass
class Skipped:
    index: int
    file: str
    reason: str


def array_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the arrays / tensors in ``obj`` (dataclasses, lists, tuples, dicts walked;
    a list is taken to be all numbers when its first item is one: token ids are not walked).
    An array reached twice (prepared features hold the media they were made from) counts once."""
    seen = set() if seen is None else seen
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.nbytes if isinstance(obj, np.ndarray) else obj.numel() * obj.element_size()
    if is_dataclass(obj):
        return sum(array_bytes(getattr(obj, f.name), seen) for f in fields(obj))
    if isinstance(obj, (list, tuple)):
        if not obj or isinstance(obj[0], (int, float)):
            return 0
        return sum(array_bytes(x, seen) for x in obj)
    if isinstance(obj, dict):
        return sum(array_bytes(x, seen) for x in obj.values())
    return 0


@dataclass
class Kept:
    """A remembered sample: decoded (with its media, if any) and prepared for one variant."""

    loaded: Loaded
    variant: int | None
    features: Any
    nbytes: int


class VideoQADataset(Dataset):
    """Decodes a sample's video(s) within the visual budget and prepares it for the model.

    Args:
        samples: the training samples.
        media_root: media paths resolve under it (escaping it is an error).
        video: frame count / fps / pixel / budget settings.
        count: the backbone's token counter (``video_settings.backbone_counter``).
        temporal_patch: frames per temporal group of the backbone's tower.
        prepare: ``Loaded -> features`` (tokenisation, pixel preprocessing); runs in workers.
        target_parts: sample id -> cache parts of its targets (storm stage 1).
        cache: where targets live.
        oracle_frames: >0 appends that many thought-video frames (the oracle method).
        keep_decoded: remember each sample decoded and prepared (``data.cache_decoded``;
            ``prepare`` must then be deterministic, as the trainer's is); failures are not
            remembered, so a file fixed on disk is read again.
        keep_bytes: stop remembering samples once their arrays hold this many bytes.
        clips: probes and decodes videos (``data.clip_cache``: through a disk cache shared
            by every run reading the same files); default: no cache.
        prepare_media: ``Loaded -> media`` (``Loaded.media``: the tower's pixel inputs), the
            part of preparing that no text variant changes; run once per remembered sample.

    An index is ``i`` or ``(i, variant)``; the variant reaches ``prepare`` as
    ``Loaded.variant``. A remembered sample asked for another variant (the latent
    curriculum's next stage) is prepared again from what was kept: neither decoded nor
    resized again, only tokenised (it was ~3 ms a sample at each of the curriculum's stages).
    """

    def __init__(
        self,
        samples: list[Sample],
        media_root: str | Path,
        video: VideoConfig,
        count: TokenCounter,
        temporal_patch: int,
        prepare: Callable[[Loaded], Any] | None = None,
        target_parts: dict[str, dict[str, str]] | None = None,
        cache: TargetCache | None = None,
        oracle_frames: int = 0,
        keep_decoded: bool = False,
        keep_bytes: int = 4 << 30,
        clips: ClipReader | None = None,
        prepare_media: Callable[[Loaded], Any] | None = None,
    ):
        self.samples, self.root, self.video = samples, Path(media_root), video
        self.count, self.temporal_patch = count, temporal_patch
        self.prepare, self.target_parts, self.cache = prepare, target_parts or {}, cache
        self.prepare_media = prepare_media
        self.oracle_frames = oracle_frames
        self.decoded: dict[int, Kept] | None = {} if keep_decoded else None
        self.keep_bytes, self.kept_bytes = keep_bytes, 0
        self.clips = clips or ClipReader()

    def __len__(self) -> int:
        return len(self.samples)

    def _clip(self, stack: contextlib.ExitStack, rel: str, sid: str, field_name: str,
              frames: int | None, start=None, end=None):
        path = resolve_media(self.root, rel, f"sample {sid}: {field_name}")
        src = stack.enter_context(self.clips.open(path, self.video.timeout_s))
        info = src.info
        avail = window_frames(info.num_frames, info.fps, start, end)
        want = frames if frames is not None else wanted_frames(self.video, avail, info.fps)
        return src, want, avail  # (the open clip, frames wanted, frames in the window)

    def load(self, i: int) -> Loaded:
        """Decode sample ``i``; raises VideoError / ManifestError on bad media."""
        s, v = self.samples[i], self.video
        with contextlib.ExitStack() as stack:  # each file opened once: probe, then read
            videos = [self._clip(stack, s.video, s.id, "video", None, s.start, s.end)]
            if self.oracle_frames:
                if not s.thought_video:
                    raise UserError(f"sample {s.id}: the oracle method needs a thought_video")
                videos.append(self._clip(stack, s.thought_video, s.id, "thought_video",
                                         self.oracle_frames))
            plans = plan_clips([(c.info.height, c.info.width, w, a) for c, w, a in videos], v,
                               self.count, self.temporal_patch)
            clips = []
            for j, ((src, *_), plan) in enumerate(zip(videos, plans, strict=True)):
                bounds = {"start": s.start, "end": s.end} if j == 0 else {}
                clips.append((src.read_clip(num_frames=plan.num_frames, **bounds), plan))
        (clip, plan), rest = clips[0], clips[1:]
        out = Loaded(s, clip.frames, clip.timestamps, plan)
        if rest:
            out.thought_frames, out.thought_timestamps, out.thought_plan = (
                rest[0][0].frames, rest[0][0].timestamps, rest[0][1])
        return out

    def _keep(self, i: int, loaded: Loaded, variant: int | None, features: Any) -> None:
        """Remember a sample (replacing its entry for an earlier variant) while the cache is
        under its byte bound. Once its media exist the decoded frames are not kept: a new
        variant is prepared from the media alone (the frames were 15% of an entry at 8 x 48 px)."""
        old = self.decoded.pop(i, None)
        if old is not None:
            self.kept_bytes -= old.nbytes
        if loaded.media is not None:
            loaded = replace(loaded, frames=None, thought_frames=None)
        size = array_bytes((loaded, features))
        if self.kept_bytes + size <= self.keep_bytes:
            self.decoded[i] = Kept(loaded, variant, features, size)
            self.kept_bytes += size

    def __getitem__(self, key: int | tuple[int, int | None]) -> Item | Skipped:
        i, variant = key if isinstance(key, tuple) else (key, None)
        s = self.samples[i]
        kept = self.decoded.get(i) if self.decoded is not None else None
        if kept is not None and kept.variant == variant:
            features = kept.features
        else:
            if kept is not None:
                loaded = kept.loaded
            else:
                try:
                    loaded = self.load(i)
                except UserError as exc:
                    return Skipped(i, s.video, str(exc))
                if self.prepare_media is not None:
                    loaded.media = self.prepare_media(loaded)
            # prepared once per variant: resizing / normalising / tokenising cost as much as
            # decoding
            x = replace(loaded, variant=variant)
            features = self.prepare(x) if self.prepare else x
            if self.decoded is not None:
                self._keep(i, loaded, variant, features)
        target = None
        parts = self.target_parts.get(s.id)
        if parts is not None and self.cache is not None:
            target = self.cache.get(parts)  # None (stale/missing) -> no alignment for it
        return Item(i, s.id, features, target)


# --- collation -----------------------------------------------------------------------------


@dataclass
class Collated:
    batch: Any  # the backbone's Batch (None when every sample of the micro-batch failed)
    ids: list[str]
    targets: torch.Tensor | None  # (B, K, P, D); zeros where target_mask is False
    target_mask: torch.Tensor | None  # (B,) bool
    skipped: list[Skipped] = field(default_factory=list)
    requested: int = 0  # samples the sampler asked for (good + skipped)


def make_collate(collate_features: Callable[[list[Any]], Any] | None) -> Callable[[list], Collated]:
    """A DataLoader ``collate_fn`` that separates skipped samples and stacks targets."""

    def collate(items: list[Item | Skipped]) -> Collated:
        good = [it for it in items if isinstance(it, Item)]
        bad = [it for it in items if isinstance(it, Skipped)]
        batch = None
        if good:
            feats = [it.features for it in good]
            batch = collate_features(feats) if collate_features else feats
        targets = mask = None
        shapes = {tuple(it.target.shape) for it in good if it.target is not None}
        if len(shapes) > 1:
            raise ValueError(f"targets of different shapes in one batch: {sorted(shapes)}")
        if shapes:
            shape = shapes.pop()
            targets = torch.stack([it.target if it.target is not None else torch.zeros(shape) for it in good])
            mask = torch.tensor([it.target is not None for it in good])
        return Collated(batch, [it.sample_id for it in good], targets, mask, bad, len(items))

    return collate


# --- sampling ------------------------------------------------------------------------------


def difficulty_weights_at(cfg: DataConfig, step: int) -> dict:
    """The level -> weight mixing in force at optimizer ``step`` (empty = natural order)."""
    for stage in cfg.curriculum:
        if step < int(stage["until_step"]):
            return dict(stage["weights"])
    return dict(cfg.difficulty_weights)


def sample_weights(samples: list[Sample], level_weights: dict) -> np.ndarray:
    """Per-sample draw probability so that each level's share of draws equals its weight."""
    counts = Counter(str(s.difficulty) for s in samples)
    w = np.array([float(level_weights.get(str(s.difficulty), 0.0)) / counts[str(s.difficulty)]
                  for s in samples])
    if w.sum() <= 0:
        raise ConfigError(
            f"data.difficulty_weights / curriculum {level_weights} select no sample "
            f"(levels present: {sorted(counts)})"
        )
    return w / w.sum()


class ResumableSampler(Sampler[list[int]]):
    """Infinite stream of per-process micro-batches; micro-batch b is a pure function of b.

    Without difficulty weights the stream walks seeded per-epoch permutations; with
    weights (curriculum / mixing) micro-batch b draws with replacement from the weights in
    force at its optimizer step, with a generator seeded by (seed, b).

    Args:
        samples: the dataset's samples (difficulty levels are read for mixing).
        batch_size: per-process micro-batch size.
        world, rank: data-parallel layout; the global micro-batch is batch_size x world.
        start: micro-batches already consumed (resume point).
        grad_accum: micro-batches per optimizer step (curriculum is by optimizer step).
        variant_at: optimizer step -> the text variant to prepare (the latent curriculum);
            given, the sampler yields ``(index, variant)`` pairs instead of indices.
    """

    def __init__(self, samples: list[Sample], batch_size: int, cfg: DataConfig, seed: int = 0,
                 world: int = 1, rank: int = 0, start: int = 0, grad_accum: int = 1,
                 variant_at: Callable[[int], int | None] | None = None):
        self.samples, self.bs, self.cfg, self.seed = samples, batch_size, cfg, seed
        self.world, self.rank, self.start, self.accum = world, rank, start, grad_accum
        self.variant_at = variant_at
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.samples))}
        return self._perms[epoch]

    def global_batch(self, b: int) -> list[int]:
        """Indices of global micro-batch ``b`` (all processes together)."""
        g, n = self.bs * self.world, len(self.samples)
        weights = difficulty_weights_at(self.cfg, b // self.accum)
        if weights:
            rng = np.random.default_rng([self.seed, 1, b])
            return rng.choice(n, size=g, replace=True, p=sample_weights(self.samples, weights)).tolist()
        out = []
        for pos in range(b * g, (b + 1) * g):
            out.append(int(self._perm(pos // n)[pos % n]))
        return out

    def __iter__(self) -> Iterator[list]:
        b = self.start
        while True:
            idx = self.global_batch(b)[self.rank * self.bs : (self.rank + 1) * self.bs]
            if self.variant_at is not None:
                v = self.variant_at(b // self.accum)
                idx = [(i, v) for i in idx]
            yield idx
            b += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs it for len()
        raise TypeError("ResumableSampler is infinite")
