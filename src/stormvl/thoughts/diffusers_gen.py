"""`diffusers`: thought videos from an image-to-video diffusion model.

The model continues the input video from a keyframe (its last frame, or the frame at the
question's time bound ``end``), steered by a prompt built from the question, the answer and
the rationale. Any diffusers image-to-video pipeline that takes ``image`` / ``prompt`` /
``num_frames`` works (LTX-Video, Wan 2.x, CogVideoX I2V); the folder's ``model_index.json``
picks the class. ``save_tiny_pipeline`` builds a random-init LTX-Video pipeline small
enough for CPU tests and the speed benchmark.
"""

from __future__ import annotations

import inspect
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from stormvl.data.manifest import Sample
from stormvl.data.video import VideoInfo
from stormvl.errors import UserError
from stormvl.thoughts.base import GenConfig, Generator, InputClip, sample_seed

PROMPT_FIELDS = ("question", "answer", "letter", "options", "rationale")
DEFAULT_PROMPT = (
    "The video continues and shows what answers the question: {question} "
    "Answer: {answer}. {rationale}"
)
# What the known pipelines need (from their check_inputs / prepare_latents in diffusers
# 0.42): the height / width multiple, so a bad size fails at load rather than on the first
# batch, and whether one call takes a different image per prompt. Wan's I2V call encodes
# the whole image batch once per generator, so it is called one sample at a time.
_PIPELINES = {
    "LTXImageToVideoPipeline": (32, True),
    "CogVideoXImageToVideoPipeline": (8, True),
    "WanImageToVideoPipeline": (16, False),
}


@dataclass
class DiffusersConfig(GenConfig):
    """An image-to-video pipeline, its sampling settings and the prompt template."""

    model: str = ""  # Hugging Face model id or local diffusers pipeline folder
    pipeline_class: str = ""  # e.g. LTXImageToVideoPipeline; "" = the folder's model_index.json
    local_files_only: bool = False  # never reach the network for a model id
    device: str = "cuda"  # "cuda", "cuda:N"; "cpu" only for tiny test pipelines
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    cpu_offload: bool = False  # move idle sub-models to CPU (saves GPU memory, slower)
    keyframe: Literal["last", "end"] = "last"  # last input frame, or the frame at `end`
    prompt_template: str = DEFAULT_PROMPT  # fields: {question} {answer} {letter} {options} {rationale}
    negative_prompt: str = ""
    height: int = 480  # generation size; outputs are resized to the input video's size
    width: int = 704
    num_frames: int = 25  # frames generated (LTX: 8k+1, Wan / CogVideoX: 4k+1)
    steps: int = 30  # denoising steps
    guidance_scale: float = 3.0
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # extra pipeline __call__ args

    def validate(self) -> list[str]:
        problems = super().validate()
        if not isinstance(self.prompt_template, str):
            return problems  # already reported as a type problem
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(self.prompt_template) if f is not None}
        except ValueError as exc:
            names = set()
            problems.append(f"prompt_template: {exc}")
        bad = sorted(names - set(PROMPT_FIELDS))
        if bad:
            problems.append(f"prompt_template: unknown field(s) {bad} (use {list(PROMPT_FIELDS)})")
        for name in ("height", "width", "num_frames", "steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            problems.append(f"device: expected cuda, cuda:N or cpu, got {self.device!r}")
        return problems


def build_prompt(template: str, sample: Sample) -> str:
    """Fill the template from a sample (missing rationale -> empty)."""
    text = template.format(
        question=sample.question.strip(),
        answer=sample.answer_text,
        letter=sample.answer,
        options=", ".join(sample.options),
        rationale=(sample.rationale or "").strip(),
    )
    return " ".join(text.split())


def to_uint8_video(frames: Any, size: tuple[int, int]) -> np.ndarray:
    """Pipeline output (T, h, w, 3) float in [0, 1] -> (T, H, W, 3) uint8 at ``size`` (H, W)."""
    arr = np.asarray(frames, dtype=np.float32)
    arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    h, w = size
    if arr.shape[1:3] == (h, w):
        return arr
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in arr])


class DiffusersGenerator(Generator):
    name = "diffusers"
    config_cls = DiffusersConfig

    def __init__(self, config: DiffusersConfig):
        super().__init__(config)
        self.pipe: Any = None
        self.batches_images = False  # one pipeline call per batch (else per sample)

    def load(self) -> None:
        cfg = self.config
        if not cfg.model:
            raise UserError("diffusers: config field 'model' is empty (a model id or a local folder)")
        import torch

        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(
                f"diffusers: device {cfg.device!r} but no CUDA GPU is visible; video generation "
                "needs a GPU (device=cpu is for tiny test pipelines only)"
            )
        try:
            import diffusers
        except ImportError:
            raise UserError("diffusers: not installed (pip install 'stormvl[gen]')") from None
        dtype = getattr(torch, cfg.dtype)
        cls = diffusers.DiffusionPipeline
        if cfg.pipeline_class:
            cls = getattr(diffusers, cfg.pipeline_class, None)
            if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
                raise UserError(f"diffusers: pipeline_class {cfg.pipeline_class!r} is not a diffusers pipeline")
        pipe = _load_pipeline(cls, cfg.model, dtype, cfg.local_files_only)
        params = inspect.signature(pipe.__call__).parameters
        if not {"image", "prompt", "num_frames"} <= set(params):
            raise UserError(f"diffusers: {cfg.model} is a {type(pipe).__name__}, not an image-to-video pipeline")
        mult, self.batches_images = _PIPELINES.get(type(pipe).__name__, (1, False))
        if cfg.height % mult or cfg.width % mult:
            raise UserError(
                f"diffusers: height/width {cfg.height}x{cfg.width} must be multiples of {mult} "
                f"for {type(pipe).__name__}"
            )
        if cfg.cpu_offload:
            pipe.enable_model_cpu_offload(device=cfg.device)
        else:
            pipe.to(cfg.device)
        pipe.set_progress_bar_config(disable=True)
        if cfg.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(cfg.device)
        self.pipe = pipe

    def frame_indices(self, sample: Sample, info: VideoInfo) -> np.ndarray:
        """Only the keyframe is decoded: the last frame, or the one at ``sample.end``."""
        last = max(0, info.num_frames - 1)
        if self.config.keyframe == "end" and sample.end is not None:
            return np.array([min(last, max(0, int(round(sample.end * info.fps))))], dtype=np.int64)
        return np.array([last], dtype=np.int64)

    def generate_batch(self, samples: list[Sample], clips: list[InputClip]) -> list[np.ndarray]:
        if not self.batches_images and len(samples) > 1:
            return [v for s, c in zip(samples, clips, strict=True) for v in self._call([s], [c])]
        return self._call(samples, clips)

    def _call(self, samples: list[Sample], clips: list[InputClip]) -> list[np.ndarray]:
        import torch

        cfg = self.config
        images = [Image.fromarray(c.frames[-1]) for c in clips]  # (H, W, 3) keyframes
        # One CPU generator per sample: its noise depends on the sample, not on the batch,
        # the shard or the GPU.
        gens = [torch.Generator("cpu").manual_seed(sample_seed(cfg.seed, s.id)) for s in samples]
        with torch.inference_mode():
            out = self.pipe(
                image=images if len(images) > 1 else images[0],
                prompt=[build_prompt(cfg.prompt_template, s) for s in samples],
                negative_prompt=cfg.negative_prompt or None,
                height=cfg.height,
                width=cfg.width,
                num_frames=cfg.num_frames,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                generator=gens,
                output_type="np",
                **cfg.call_kwargs,
            )
        videos = out.frames  # (B, T, h, w, 3) float in [0, 1]
        return [to_uint8_video(v, c.size) for v, c in zip(videos, clips, strict=True)]

    def generate(self, sample: Sample, clip: InputClip) -> np.ndarray:
        return self.generate_batch([sample], [clip])[0]

    def memory_stats(self) -> dict[str, Any]:
        if not self.config.device.startswith("cuda"):
            return {}
        import torch

        return {
            "device": torch.cuda.get_device_name(self.config.device),
            "max_allocated_bytes": int(torch.cuda.max_memory_allocated(self.config.device)),
            "max_reserved_bytes": int(torch.cuda.max_memory_reserved(self.config.device)),
        }


def _load_pipeline(cls: Any, model: str, dtype: Any, local_files_only: bool) -> Any:
    """Load a pipeline; every way it can fail becomes a UserError naming the model."""
    local = Path(model).expanduser()
    looks_local = model.startswith(("/", ".", "~")) or model.count("/") != 1
    if local.exists() or looks_local:
        if not (local / "model_index.json").is_file():
            raise UserError(
                f"diffusers: no pipeline weights at {local} (model_index.json not found); "
                "download the model there or give a Hugging Face model id"
            )
        source = str(local)
    else:
        source = model
    try:
        return cls.from_pretrained(
            source, dtype=dtype, local_files_only=local_files_only
        )
    except Exception as exc:  # hub / cache / corrupt-weight errors have many types
        raise UserError(f"diffusers: cannot load {model!r} ({type(exc).__name__}: {exc})") from None


def save_tiny_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Save a random-init LTX-Video image-to-video pipeline of ~100k parameters at ``path``.

    For offline tests and the CPU speed number only: it has the real components and the real
    call path, and generates noise. Its tokenizer is a word-level vocabulary built locally.
    """
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXVideoTransformer3DModel,
    )
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = ("the", "a", "video", "continues", "and", "shows", "what", "answers", "question",
             "answer", "ball", "box", "left", "right", "moves", "to", "of", "is")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=128
    )
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(vocab), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8,
    ))
    vae = AutoencoderKLLTXVideo(  # 4x spatial, 4x temporal compression, 8 latent channels
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
        patch_size=1, patch_size_t=1,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, num_layers=1, caption_channels=16,
    )
    pipe = LTXImageToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer,
    )
    pipe.save_pretrained(path)
    return Path(path)
