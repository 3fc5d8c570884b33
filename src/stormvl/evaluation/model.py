"""What a checkpoint is and how it is evaluated: loading it with the settings it was trained
with, and the pure pieces that turn those settings into generation settings and records."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from stormvl.config import from_dict
from stormvl.errors import UserError
from stormvl.training.config import METHODS, MethodConfig, VideoConfig

LATENT_METHODS = ("latent", "storm")
PLAIN_MAX_VISUAL_TOKENS = 32768  # budget for checkpoints without stormvl.json


@dataclass
class EvalSettings:
    """How a model is run (None = take it from the checkpoint)."""

    num_frames: int | None = None  # uniform frames per video (overrides the checkpoint's)
    fps: float | None = None  # or: frames per second (overrides the checkpoint's)
    k: int | None = None  # latent steps (latent / storm checkpoints only)
    batch_size: int = 8  # questions per generate call
    max_new_tokens: int | None = None  # default: 16, or 256 for textcot
    do_sample: bool = False  # greedy by default, as the harnesses score
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # sampling seed (only used when do_sample)
    limit: int | None = None  # first N items only (smoke runs)
    subtitles: bool = False  # VideoMME with subtitles
    # a folder of decoded clips shared with other evaluations of the same files (small clips;
    # see data.clip_cache); does not change any prediction
    clip_cache: str | None = None


@dataclass
class LoadedModel:
    """A backbone plus what its checkpoint says about how it was trained."""

    backbone: Any  # stormvl.backbones.base.Backbone
    method: str
    k: int  # latent steps it was trained with (0 for non-latent methods)
    video: VideoConfig  # the frame / pixel / budget settings it was trained with
    oracle_frames: int  # oracle: thought-video frames appended (0 otherwise)
    path: str
    meta: dict = field(default_factory=dict)
    # what the caller should be told about the choice of checkpoint (resolve_checkpoint)
    notes: list[str] = field(default_factory=list)

    @property
    def prompt(self) -> dict:
        """Its prompt layout (``data.prompt``): ``{"layout": "chat"}``, or ``bare`` with the one
        question and options it was trained on (the prompt then holds only the video)."""
        return self.meta.get("prompt") or {"layout": "chat"}

    def bare_prompt(self, question: str, options: list[str], where: str) -> bool:
        """True when this model's prompt leaves the question out (``bare``), after checking
        that ``question`` is the one it was trained on; False for the chat layout.

        Raises:
            UserError: a bare model asked another question (it never saw one).
        """
        p = self.prompt
        if p.get("layout") != "bare":
            return False
        if question != p.get("question") or list(options) != list(p.get("options") or []):
            raise UserError(f"{where}: this checkpoint was trained with data.prompt=bare on one "
                            f"question ({p.get('question')!r} with options {p.get('options')}) "
                            "and answers only that one")
        return True

    @property
    def writes_rationale(self) -> bool:
        """Replies are ``rationale\\nThe answer is X.``: textcot, or a latent / storm checkpoint
        taken while its curriculum still wrote part of the chain (``method.internalize_at``)."""
        if self.method == "textcot":
            return True
        at = self.meta.get("internalize_at") or []
        # checkpoint step N was last trained at optimizer step N - 1
        last_trained = int(self.meta.get("step", 0)) - 1
        return bool(at) and MethodConfig(internalize_at=at).rationale_stage(last_trained) is not None


def _device(device: str | None) -> str:
    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def load_model(path: str | Path, device: str | None = None, dtype: str = "auto",
               weights: bool = True) -> LoadedModel:
    """Load a stormvl checkpoint (or a plain HF Qwen-VL folder, evaluated as ``direct``).

    ``path`` may also be a training run's folder: its newest finished checkpoint is taken
    (``resolve_checkpoint``). ``weights=False``: everything but the weights (a meta-device
    model; ``load_backbone``), enough to prepare inputs exactly as the loaded model would.

    Raises:
        UserError: missing folder, unknown method, LoRA adapters that need ``stormvl export``.
    """
    from stormvl.backbones import load_backbone, read_stormvl_meta

    p, notes = resolve_checkpoint(path)
    if (p / "adapter_config.json").is_file():
        raise UserError(f"{p}: a LoRA checkpoint (adapters only); merge it first with "
                        f"'stormvl export {p} MERGED' and evaluate MERGED")
    meta = read_stormvl_meta(p) or {}
    method = meta.get("method", "direct")
    if method not in METHODS:
        raise UserError(f"{p}/stormvl.json: field 'method' {method!r} is not one of {METHODS}")
    oracle = 0
    if method == "oracle":
        oracle = int(((meta.get("config") or {}).get("method") or {}).get("oracle_frames", 4))
    dev = _device(device) if weights else "meta"  # no CUDA probe in a weightless process
    if dtype == "auto":
        dtype = "bfloat16" if dev.startswith("cuda") else "float32"
    bb = load_backbone(str(p), dtype=getattr(torch, dtype), device=dev, weights=weights)
    if meta.get("video_config"):
        video = from_dict(VideoConfig, meta["video_config"], f"{p}/stormvl.json video_config")
    else:  # not trained by stormvl: the default of 16 uniform frames, a loose budget
        bounds = {k: v for k, v in bb.video.to_dict().items() if v is not None}
        video = VideoConfig(num_frames=16, max_visual_tokens=PLAIN_MAX_VISUAL_TOKENS, **bounds)
    k = int(meta.get("k") or 0) if method in LATENT_METHODS else 0
    bb.bottleneck = bool(meta.get("bottleneck")) and k > 0  # as it was trained
    return LoadedModel(bb, method, k, video, oracle, str(p.resolve()), meta, notes)


def resolve_checkpoint(path: str | Path) -> tuple[Path, list[str]]:
    """The checkpoint folder a model path names: the folder itself, or, for a training run's
    folder (``out_dir``, holding ``checkpoints/step-N``), its newest finished checkpoint.

    Returns:
        (the checkpoint folder, warnings: a run taken before its last step).
    Raises:
        UserError: no such folder; a run with no finished checkpoint; a folder that is neither
            (naming the training runs found below it, if any).
    """
    from stormvl.backbones import read_stormvl_meta
    from stormvl.training.checkpoint import list_checkpoints

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{p}: checkpoint folder not found")
    if (p / "config.json").is_file() or (p / "adapter_config.json").is_file():
        return p, []
    if (p / "checkpoints").is_dir():
        found = list_checkpoints(p)
        if not found:
            raise UserError(f"{p}: a training run with no finished checkpoint yet "
                            f"(none under {p / 'checkpoints'})")
        step, last = found[-1]
        meta = read_stormvl_meta(last) or {}
        total = ((meta.get("config") or {}).get("optim") or {}).get("max_steps")
        notes = [] if not total or step >= total else [
            f"{p}: the run stopped at step {step} of {total}; using its newest checkpoint {last}"]
        return last, notes
    runs = _runs_below(p)
    if runs:
        more = f" and {len(runs) - 5} more" if len(runs) > 5 else ""
        raise UserError(f"{p}: not a checkpoint (no config.json) nor a training run; the "
                        f"training runs below it are {', '.join(map(str, runs[:5]))}{more}: pass "
                        "one of them, or one of its checkpoints/step-N folders")
    raise UserError(f"{p}: not a checkpoint (no config.json) nor a training run (no checkpoints/)")


def _runs_below(root: Path, depth: int = 4) -> list[Path]:
    """Training-run folders (with a ``checkpoints/`` folder) up to ``depth`` levels below."""
    out, level = [], [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            for c in sorted(d.iterdir()):
                if c.is_dir() and not c.name.startswith("."):
                    (out if (c / "checkpoints").is_dir() else nxt).append(c)
        level = nxt
    return out


# ----------------------------------------------------------------------------------------
# Pure pieces


def resolve_video(trained: VideoConfig, s: EvalSettings) -> tuple[VideoConfig, list[str]]:
    """The video settings of this run: the checkpoint's, unless frames / fps are overridden
    (with a warning, since the model then sees inputs unlike its training inputs)."""
    if s.num_frames is not None and s.fps is not None:
        raise UserError("--frames and --fps: give one, not both")
    if s.num_frames is not None:
        out = replace(trained, num_frames=s.num_frames, fps=None)
    elif s.fps is not None:
        out = replace(trained, num_frames=None, fps=s.fps)
    else:
        return trained, []
    problems = out.validate()
    if problems:
        raise UserError("; ".join(problems))
    if out == trained:
        return out, []
    was = f"num_frames={trained.num_frames}, fps={trained.fps}"
    now = f"num_frames={out.num_frames}, fps={out.fps}"
    return out, [f"video sampling overridden: {now} (the checkpoint was trained with {was})"]


def generation_settings(model: LoadedModel, s: EvalSettings) -> dict:
    """K and decoding settings; ``--k`` only makes sense for a latent checkpoint."""
    if s.k is not None and model.method not in LATENT_METHODS:
        raise UserError(f"--k {s.k}: {model.path} is a {model.method} checkpoint, which has no "
                        "latent steps")
    k = model.k if s.k is None else s.k
    if not 0 <= k <= model.backbone.max_latents:
        raise UserError(f"--k {k}: must be in [0, {model.backbone.max_latents}]")
    if s.batch_size < 1:
        raise UserError(f"--batch-size {s.batch_size}: must be >= 1")
    tokens = s.max_new_tokens or (256 if model.writes_rationale else 16)
    return {"k": k, "max_new_tokens": tokens, "do_sample": s.do_sample,
            "temperature": s.temperature, "top_p": s.top_p,
            "seed": s.seed if s.do_sample else None}


_FINAL = re.compile(r"the answer is", re.IGNORECASE)


def answer_part(writes_rationale: bool, text: str) -> str:
    """The part of a reply that is scored: a model that writes ``rationale\\nThe answer is X.``
    (textcot's training target) must not have the rationale's stray letters read as its answer."""
    if not writes_rationale:
        return text
    hits = list(_FINAL.finditer(text))
    return text[hits[-1].end():].strip() if hits else text


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 over every file's name and size plus its first and last MiB.

    Hashing 15 GB of 7B weights would take minutes per eval; size + both ends identify a
    checkpoint file in practice and cost milliseconds.
    """
    h = hashlib.sha256()
    p = Path(path)
    for f in sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")):
        if f.name.startswith(("trainer_state", "rng_rank")):
            continue  # resume state: not part of the model
        size = f.stat().st_size
        h.update(f"{f.relative_to(p)}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("stormvl", "torch", "transformers", "accelerate", "av", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_description() -> str:
    """The CPU and the vector units torch uses on it, e.g. ``AMD EPYC (AVX2)``: wall times
    on CPU are only comparable on the same one (the demo's full preset took 93 min on one
    2-core machine and ~1.8x as long per training step on another)."""
    import platform

    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
