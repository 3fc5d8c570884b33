"""The runner ``stormvl eval``, ``stormvl answer`` and the lmms-eval plug-in all answer
through:

    item -> frames planned exactly as training planned them (``training.data.plan_clips``:
            the checkpoint's frame count / fps, pixel bounds and visual-token budget; the
            oracle's thought video shares the budget as in training)
         -> Prompt (method layout: K latents, the oracle's second video)
         -> latent engine ``generate`` in batches (greedy by default)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stormvl.config import to_dict
from stormvl.data.clip_cache import ClipReader, ClipSource
from stormvl.errors import UserError
from stormvl.evaluation.model import (
    EvalSettings,
    LoadedModel,
    answer_part,
    checkpoint_fingerprint,
    generation_settings,
    load_model,
    resolve_video,
)
from stormvl.tasks.base import EvalItem, frame_folder_files, load_clip

# Reply budget of an open-ended question (an answer in words, not a letter) when the run sets
# none: 16 tokens would cut most sentences. (lmms-eval gives all of MMVU 1024.)
FREE_FORM_MAX_NEW_TOKENS = 256


@dataclass
class Prepared:
    """One item ready for the model."""

    item: EvalItem
    encoded: Any  # the adapter's Encoded
    frame_indices: list[int]  # source frames of the input video
    thought_indices: list[int] | None  # oracle: source frames of the thought video
    load_s: float  # decode + preprocessing seconds


def _source(item: EvalItem, src: ClipSource | None) -> tuple[int, float, int, int]:
    """(frames, fps, height, width) of an item's media: a video file (``src``, opened) or a
    frame folder."""
    if src is not None:
        info = src.info
        return info.num_frames, info.fps, info.height, info.width
    from PIL import Image

    files = frame_folder_files(item.video)
    with Image.open(files[0]) as im:
        w, h = im.size
    return len(files), item.frames_fps, h, w


class Runner:
    """A loaded model with this run's resolved video and generation settings."""

    def __init__(self, model: LoadedModel, settings: EvalSettings):
        from stormvl.training.video_settings import backbone_counter

        self.model, self.settings = model, settings
        self.video, warnings = resolve_video(model.video, settings)
        self.warnings = [*model.notes, *warnings]
        self.gen = generation_settings(model, settings)
        self.gen["free_form_max_new_tokens"] = settings.max_new_tokens or max(
            self.gen["max_new_tokens"], FREE_FORM_MAX_NEW_TOKENS)
        self._count = backbone_counter(model.backbone)
        self._torch_gen = torch.Generator().manual_seed(settings.seed)
        # prepare() runs in decode threads; a fast tokenizer must not be entered concurrently
        # (its Rust state is borrowed per call: "Already borrowed" errors under contention)
        self._encode_lock = threading.Lock()
        self.clips = ClipReader(settings.clip_cache)

    @property
    def method(self) -> str:
        return self.model.method

    def prepare(self, item: EvalItem) -> Prepared:
        """Decode and encode one item, planning frames exactly as training did.

        Raises:
            UserError / VideoError: missing or unreadable media (the caller records it).
        """
        from stormvl.backbones import Prompt
        from stormvl.data.video import window_frames
        from stormvl.training.data import plan_clips
        from stormvl.training.video_settings import wanted_frames, with_max_pixels

        t0 = time.perf_counter()
        bb, v = self.model.backbone, self.video
        thought = None
        if self.model.oracle_frames:
            thought = item.meta.get("thought_video")
            if not thought:
                raise UserError(f"item {item.id}: the oracle method needs a thought video")
        with contextlib.ExitStack() as stack:  # each video file opened once: probe, then read
            src = None if item.frames_fps is not None else \
                stack.enter_context(self.clips.open(item.video, v.timeout_s))
            n, fps, h, w = _source(item, src)
            avail = window_frames(n, fps, item.start, item.end)
            shapes = [(h, w, wanted_frames(v, avail, fps), avail)]
            if thought:
                tsrc = stack.enter_context(self.clips.open(thought, v.timeout_s))
                tn, tfps, th, tw = _source(item, tsrc)
                shapes.append((th, tw, self.model.oracle_frames, window_frames(tn, tfps)))
            plans = plan_clips(shapes, v, self._count, bb.temporal_patch)
            clip = load_clip(item, num_frames=plans[0].num_frames, source=src)
            tclip = tsrc.read_clip(num_frames=plans[1].num_frames) if thought else None
        videos = [with_max_pixels(bb, plans[0].max_pixels).preprocess_video(clip.frames, clip.timestamps)]
        t_idx = None
        if tclip is not None:
            videos.append(with_max_pixels(bb, plans[1].max_pixels)
                          .preprocess_video(tclip.frames, tclip.timestamps))
            t_idx = [int(i) for i in tclip.indices]
        if self.model.bare_prompt(item.question, item.options, f"item {item.id}"):
            prompt = Prompt(videos=videos, text="", k=self.gen["k"], system="")
        else:
            prompt = Prompt(videos=videos, text=item.render_prompt(clip.timestamps), k=self.gen["k"])
        with self._encode_lock:
            encoded = bb.encode(prompt)
        return Prepared(item, encoded, [int(i) for i in clip.indices], t_idx,
                        time.perf_counter() - t0)

    def run(self, prepared: Sequence[Prepared], projector: torch.nn.Module | None = None,
            **overrides):
        """Generate for a batch of prepared items; returns the engine's ``GenerateOutput``.

        Open-ended items (``format == "open_ended"``) decode up to the free-form budget, the
        others up to ``max_new_tokens``; the two kinds are generated apart, so a multiple-choice
        reply does not depend on whether an open question shared its batch.

        Args:
            projector: maps each latent state before it is fed back (the engine's hook;
                diagnostics use it to swap / zero / perturb latents). None for evaluation.
            overrides: generation settings for this call (max_new_tokens, do_sample, ...);
                a ``max_new_tokens`` here applies to every item.
        """
        if "max_new_tokens" in overrides:
            return self._generate(prepared, projector, overrides)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prepared):
            key = "free_form_max_new_tokens" if p.item.format == "open_ended" else "max_new_tokens"
            groups.setdefault(self.gen[key], []).append(i)
        outs = [(rows, self._generate([prepared[i] for i in rows], projector,
                                      {**overrides, "max_new_tokens": n}))
                for n, rows in groups.items()]
        return outs[0][1] if len(outs) == 1 else _merge(outs, len(prepared))

    def _generate(self, prepared: Sequence[Prepared], projector, overrides: dict):
        from stormvl.latent import generate

        g = {**self.gen, **overrides}
        bb = self.model.backbone
        batch = bb.collate([p.encoded for p in prepared]).to(bb.device)
        return generate(bb, batch, max_new_tokens=g["max_new_tokens"], do_sample=g["do_sample"],
                        temperature=g["temperature"], top_p=g["top_p"],
                        generator=self._torch_gen if g["do_sample"] else None,
                        projector=projector)

    def generate(self, batch: Sequence[tuple[Sequence[str], str]], max_new_tokens: int = 16,
                 do_sample: bool = False, temperature: float = 0.0) -> list[str]:
        """lmms-eval's hook: ``[(video_paths, prompt_text), ...]`` -> replies (same path as eval).

        Raises:
            UserError: a request without exactly one video, or a video that cannot be read.
        """
        prepared = []
        for i, (videos, text) in enumerate(batch):
            if len(videos) != 1:
                raise UserError(f"request {i}: stormvl takes one video per question, got {len(videos)}")
            prepared.append(self.prepare(EvalItem(str(i), "lmms-eval", Path(videos[0]), text, "")))
        sample = bool(do_sample) and temperature > 0
        out = self.run(prepared, max_new_tokens=int(max_new_tokens), do_sample=sample,
                       temperature=float(temperature) if sample else 1.0)
        return [answer_part(self.model.writes_rationale, t) for t in out.texts]

    def describe(self, example_text: str = "") -> dict:
        """What makes this run's numbers reproducible (minus the per-item frame hash)."""
        bb = self.model.backbone
        return {
            "checkpoint": self.model.path,
            "checkpoint_sha": checkpoint_fingerprint(self.model.path),
            "backbone": bb.family,
            "method": self.method,
            "trained_k": self.model.k,
            "oracle_frames": self.model.oracle_frames,
            "video": to_dict(self.video),
            "video_pixels": bb.video.to_dict(),
            "generation": self.gen,
            "chat_template_example": self._template(example_text),
        }

    def _template(self, text: str) -> str:
        """The chat layout around a question (no video: the placeholder span is elided)."""
        from stormvl.backbones import Prompt

        bb = self.model.backbone
        if self.model.prompt.get("layout") == "bare":  # the user turn holds only the video
            enc = bb.encode(Prompt(videos=[], text="", k=self.gen["k"], system=""))
        else:
            enc = bb.encode(Prompt(videos=[], text=text or "{question}", k=self.gen["k"]))
        return bb.tokenizer.decode(enc.input_ids, skip_special_tokens=False)


def _merge(parts: list[tuple[list[int], Any]], n: int):
    """One ``GenerateOutput`` from those of row subsets (``(rows, output)`` each), in the
    original row order; the batch's time is the sum of the parts'."""
    from stormvl.latent.engine import GenerateOutput

    order = [(row, out, j) for rows, out in parts for j, row in enumerate(rows)]
    order.sort(key=lambda t: t[0])
    assert [t[0] for t in order] == list(range(n))
    timings: dict[str, float] = {}
    for _, out in parts:
        for k, v in out.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    return GenerateOutput(
        texts=[out.texts[j] for _, out, j in order],
        token_ids=[out.token_ids[j] for _, out, j in order],
        latents=torch.stack([out.latents[j] for _, out, j in order]),  # (B, K, D)
        timings=timings,
        n_generated=[out.n_generated[j] for _, out, j in order])


def load_runner(pretrained: str, **settings: Any) -> Runner:
    """The lmms-eval plug-in's entry: a checkpoint plus ``--model_args`` -> ``Runner``.

    Known settings: num_frames, fps, k, max_new_tokens, device, dtype (others are refused).
    """
    known = {"num_frames", "fps", "k", "max_new_tokens", "device", "dtype"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"unknown stormvl model_args {unknown}; known: {sorted(known)}")
    num = lambda key, cast: None if settings.get(key) in (None, "") else cast(settings[key])  # noqa: E731
    s = EvalSettings(num_frames=num("num_frames", int), fps=num("fps", float), k=num("k", int),
                     max_new_tokens=num("max_new_tokens", int), batch_size=1)
    model = load_model(pretrained, settings.get("device"), settings.get("dtype") or "auto")
    return Runner(model, s)
