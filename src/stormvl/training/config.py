"""The typed run config of ``stormvl train``: one dataclass per concern.

A YAML file holds what differs from the defaults; ``key=value`` overrides the rest
(``optim.lr=1e-4 method.k=8``). Every field has a default and a one-line comment; the
``validate`` methods gather every cross-field problem so a user fixes a config in one round.
The resolved config is saved beside every checkpoint (``stormvl.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

METHODS = ("direct", "textcot", "latent", "storm", "oracle")


@dataclass
class LoraConfig:
    """Low-rank adapters through peft (the 7B GPU recipe); off for the tiny CPU model."""

    enabled: bool = False  # wrap the language model with peft LoRA adapters
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the adapter input
    # attention + MLP projections of the language model (names as in Qwen2.5-VL)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def validate(self) -> list[str]:
        out = []
        if self.enabled and (self.r < 1 or self.alpha < 1):
            out.append("lora.r / lora.alpha: must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"lora.dropout: {self.dropout} is not in [0, 1)")
        return out


@dataclass
class ModelConfig:
    """Which backbone to train and how much of it."""

    # "tiny:<family>[:<size>]" builds a random-init tiny model offline (e.g. "tiny:qwen2_5_vl");
    # anything else is a local HF folder or hub id loaded with from_pretrained.
    backbone: str = "tiny:qwen2_5_vl"
    family: str | None = None  # adapter family when it cannot be read from the checkpoint
    init_seed: int = 0  # weight seed of a tiny backbone
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # parameter dtype
    freeze_vision: bool = True  # keep the vision tower + merger frozen
    gradient_checkpointing: bool = False  # recompute activations in backward (large models)
    trust_remote_code: bool = False  # never run code shipped with a checkpoint unless set
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class MethodConfig:
    """The method: prompt layout + loss. Methods never change the loop itself."""

    name: Literal["direct", "textcot", "latent", "storm", "oracle"] = "storm"
    stage: int = 1  # storm only: 1 = CE + lambda * align, 2 = CE from a stage-1 checkpoint
    k: int = 4  # latent steps (latent / storm); ignored (0) for the others
    stage1_checkpoint: str | None = None  # storm stage 2: the stage-1 checkpoint folder
    oracle_frames: int = 4  # oracle: thought-video frames appended to the input video
    # latent / storm: the answer attends only to the latent chain, not to the video or the
    # question, so whatever it uses must pass through the K latents (docs/engine.md)
    bottleneck: bool = False
    # latent / storm, Coconut-style: the rationale is written after the latents and one more
    # of its sentences is dropped at each of these optimizer steps; after the last, only the
    # answer is left, so what the sentences carried must move into the latents. Empty = the
    # answer alone from step 0. (Starting from a textcot checkpoint is stage 0 of Coconut.)
    internalize_at: list[int] = field(default_factory=list)

    def validate(self) -> list[str]:
        out = []
        if self.stage not in (1, 2):
            out.append(f"method.stage: {self.stage} is not 1 or 2")
        if self.name in ("latent", "storm") and self.k < 1:
            out.append(f"method.k: {self.name} needs k >= 1, got {self.k}")
        if self.name == "storm" and self.stage == 2 and not self.stage1_checkpoint:
            out.append("method.stage1_checkpoint: storm stage 2 needs the stage-1 checkpoint")
        if self.bottleneck and self.name not in ("latent", "storm"):
            out.append(f"method.bottleneck: only latent and storm have latents, not {self.name}")
        if self.name == "oracle" and self.oracle_frames < 1:
            out.append("method.oracle_frames: must be >= 1")
        if self.internalize_at:
            steps = list(self.internalize_at)
            if self.name not in ("latent", "storm"):
                out.append(f"method.internalize_at: only latent and storm have latents, not {self.name}")
            if any(not isinstance(x, int) or x < 1 for x in steps) or steps != sorted(set(steps)):
                out.append(f"method.internalize_at: needs increasing step numbers >= 1, got {steps}")
        return out

    def rationale_stage(self, step: int) -> int | None:
        """Rationale sentences dropped at optimizer ``step`` (None = all: the answer alone)."""
        passed = sum(step >= x for x in self.internalize_at)
        return None if passed == len(self.internalize_at) else passed

    @property
    def num_latents(self) -> int:
        """K actually used by the engine (0 for methods without latents)."""
        return self.k if self.name in ("latent", "storm") else 0

    @property
    def uses_align(self) -> bool:
        return self.name == "storm"


@dataclass
class TargetConfig:
    """Thought video -> K fixed target vectors (see targets.py for why fixed)."""

    # random_projection: fixed random projection of downsampled thought-video pixels (tiny
    # default); backbone: the frozen pretrained vision tower + merger (real checkpoints);
    # frozen_copy: a copy of the vision tower taken after `warmup_steps` of CE-only training.
    encoder: Literal["random_projection", "backbone", "frozen_copy"] = "random_projection"
    # mean: K time segments, each mean-pooled; multi: each segment also split into
    # `per_step` spatial groups (finer targets against over-pooled collapse).
    reduction: Literal["mean", "multi"] = "mean"
    per_step: int = 4  # multi: pooled vectors per latent step
    frames: int = 8  # thought-video frames sampled for the targets
    pixels: int = 16  # random_projection: frames are area-downsampled to pixels x pixels
    grid: int = 2  # random_projection: grid x grid spatial cells per frame before projection
    dim: int = 0  # random_projection output width; 0 = the language model's hidden width
    seed: int = 0  # random_projection matrix seed (part of the cache key)
    warmup_steps: int = 100  # frozen_copy: CE-only steps before the tower copy is taken
    cache_dir: str | None = None  # on-disk target cache; default <out_dir>/../target_cache

    def validate(self) -> list[str]:
        out = []
        if self.per_step < 1 or self.frames < 1 or self.pixels < 1 or self.grid < 1:
            out.append("targets.per_step / frames / pixels / grid: must be >= 1")
        if self.grid > self.pixels:
            out.append("targets.grid: must be <= targets.pixels")
        if self.dim < 0:
            out.append("targets.dim: must be >= 0")
        return out


@dataclass
class AlignConfig:
    """Stage-I alignment of latent states to the thought-video targets."""

    loss: Literal["cosine", "mse", "infonce"] = "cosine"  # infonce contrasts across the batch
    weight: float = 1.0  # lambda in CE + lambda * align (stage 1)
    stage2_weight: float = 0.0  # align weight kept on in stage 2 (0 = answer-only, the paper)
    temperature: float = 0.1  # infonce temperature
    projector: Literal["auto", "linear", "none"] = "auto"  # auto: linear only if widths differ
    # subtract the training-set mean target before aligning: pooled thought-video targets of
    # mostly static scenes are nearly identical across questions (cross-question cosine
    # 0.9996 measured on the shell game), so uncentred alignment teaches one constant vector
    center: bool = True

    def validate(self) -> list[str]:
        out = []
        if self.weight < 0 or self.stage2_weight < 0:
            out.append("align.weight / align.stage2_weight: must be >= 0")
        if self.temperature <= 0:
            out.append("align.temperature: must be > 0")
        return out


@dataclass
class VideoConfig:
    """Frames and resolution; stored in the checkpoint so evaluation reuses them."""

    num_frames: int | None = 8  # uniform frame count (give this or fps)
    fps: float | None = None  # sample this many frames per second instead
    max_frames: int = 64  # cap for fps sampling
    min_pixels: int = 28 * 28  # per-frame pixel floor after resizing
    max_pixels: int = 224 * 224  # per-frame pixel ceiling after resizing
    max_visual_tokens: int = 4096  # total visual tokens per sample (all videos together)
    timeout_s: float = 30.0  # per-video decode timeout in the data workers

    def validate(self) -> list[str]:
        out = []
        if (self.num_frames is None) == (self.fps is None):
            out.append("video: give exactly one of num_frames or fps")
        if self.num_frames is not None and self.num_frames < 1:
            out.append("video.num_frames: must be >= 1")
        if self.fps is not None and self.fps <= 0:
            out.append("video.fps: must be > 0")
        if self.min_pixels < 1 or self.max_pixels < self.min_pixels:
            out.append("video.min_pixels / max_pixels: need 1 <= min_pixels <= max_pixels")
        if self.max_visual_tokens < 1:
            out.append("video.max_visual_tokens: must be >= 1")
        return out


@dataclass
class DataConfig:
    """Where the training samples come from and how bad media is handled."""

    train: str = ""  # manifest / importer file (or a dataset name in dataset_info)
    format: Literal["stormvl", "llamafactory", "video_r1"] = "stormvl"
    dataset_info: str | None = None  # llamafactory: dataset_info.json naming `train`
    media_root: str | None = None  # media paths resolve here (default: the file's folder)
    split: str | None = "train"  # keep rows with this split (None = all rows)
    limit: int | None = None  # use only the first N samples
    num_workers: int = 0  # DataLoader decode workers
    # keep each decoded, prepared sample in memory (in each loader worker), so epochs after
    # the first decode and preprocess nothing: for small datasets trained for many epochs
    # (the demo's suite: decoding and preprocessing were most of the CPU time). Costs the
    # sample's pixel tensors (float32, ~5x the uint8 frames, which are not kept), up to
    # cache_decoded_gb per worker; past it, further samples are prepared each time (under random sampling,
    # keeping the first that fit hits as often as an LRU would, without churn). A new text
    # variant (the latent curriculum's next stage) re-tokenises a kept sample, nothing more
    cache_decoded: bool = False
    cache_decoded_gb: float = 4.0
    # a folder of decoded clips on disk, shared by every run (and evaluation) that reads the
    # same files: only the first decodes (the demo's 25 runs over one suite). Small clips
    # only: an entry holds the sampled uint8 frames (16 frames of 448 x 448: ~10 MB)
    clip_cache: str | None = None
    # while the vision tower is frozen, keep each clip's tower output in (CPU) memory up to
    # this many GB, so later epochs skip the tower (0 = run it every step). Not under FSDP.
    tower_cache_gb: float = 1.0
    max_bad_fraction: float = 0.05  # stop when more than this fraction of videos fail
    # prompt layout: "chat" = the family's system turn, the question, the lettered options
    # and the answer instruction (the layout benchmarks and released checkpoints use);
    # "bare" = the user turn holds only the video(s), for a model trained from scratch on
    # ONE question: every row must ask it with the same options, the checkpoint records
    # them and evaluation refuses any other question. At the demo's size that constant text
    # was ~85% of a direct step's tokens (126 of 144).
    prompt: Literal["chat", "bare"] = "chat"
    # difficulty mixing: sampling weight per difficulty level (empty = natural frequencies)
    difficulty_weights: dict = field(default_factory=dict)
    # curriculum: list of {until_step: N, weights: {level: w}}; the first whose until_step
    # is above the current step applies, after the last one `difficulty_weights` does.
    curriculum: list = field(default_factory=list)

    def validate(self) -> list[str]:
        out = []
        if not self.train:
            out.append("data.train: required (a manifest path)")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            out.append("data.max_bad_fraction: must be in [0, 1]")
        if self.num_workers < 0:
            out.append("data.num_workers: must be >= 0")
        if self.cache_decoded_gb < 0:
            out.append("data.cache_decoded_gb: must be >= 0")
        if self.tower_cache_gb < 0:
            out.append("data.tower_cache_gb: must be >= 0")
        for i, stage in enumerate(self.curriculum):
            if not isinstance(stage, dict) or set(stage) != {"until_step", "weights"}:
                out.append(f"data.curriculum[{i}]: needs exactly until_step and weights")
        return out


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay; global batch = batch x accum x processes."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 10  # linear warmup (optimizer steps)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    max_steps: int = 100  # optimizer steps
    batch_size: int = 8  # micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    clip: float = 1.0  # max gradient norm (0 = off)

    def validate(self) -> list[str]:
        out = []
        if self.lr <= 0 or self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            out.append("optim: lr > 0, max_steps >= 1, batch_size >= 1, grad_accum >= 1")
        if len(self.betas) != 2:
            out.append("optim.betas: needs two numbers")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            out.append("optim.warmup_steps >= 0 and optim.min_lr_ratio in [0, 1]")
        return out


@dataclass
class CheckpointConfig:
    every: int = 50  # optimizer steps between checkpoints (the last step always saves)
    keep_last: int = 2  # older step checkpoints are deleted


@dataclass
class LogConfig:
    every: int = 1  # optimizer steps between metric rows
    tensorboard: bool = True  # also write TensorBoard event files
    progress: bool = True  # progress bar on the main process


@dataclass
class TrainConfig:
    """Everything one training run needs; saved resolved beside each checkpoint."""

    out_dir: str = "runs/train"  # checkpoints, metrics.jsonl, tensorboard/
    seed: int = 0  # data order, init of new parameters, dropout
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    data: DataConfig = field(default_factory=DataConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> list[str]:
        out = []
        encoder = self.targets.encoder
        if self.method.name == "storm" and encoder == "backbone" and not self.model.freeze_vision:
            # Targets that move with the model teach nothing (pilot: collapse to one
            # direction, docs/training.md).
            out.append(
                "targets.encoder=backbone needs model.freeze_vision=true "
                "(a vision tower trained by the same loss gives collapsing targets)"
            )
        if (self.method.name == "storm" and self.method.stage == 2 and self.align.stage2_weight > 0
                and encoder == "frozen_copy"):
            out.append("align.stage2_weight > 0 needs targets.encoder random_projection or backbone "
                       "(a stage-2 tower copy would not be the stage-1 targets)")
        last = self.method.internalize_at[-1] if self.method.internalize_at else 0
        if isinstance(last, int) and last >= self.optim.max_steps:
            out.append(f"method.internalize_at: its last step {last} must be below optim.max_steps "
                       f"({self.optim.max_steps}), so the run ends answering from the latents alone")
        return out

    @property
    def align_weight(self) -> float:
        """lambda for this run: stage 1 weight, stage 2 kept-on weight, else 0."""
        if not self.method.uses_align:
            return 0.0
        return self.align.weight if self.method.stage == 1 else self.align.stage2_weight
