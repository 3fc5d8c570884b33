"""The small interface every backbone family implements, and the code they share.

A ``Backbone`` owns everything family-specific: frames -> pixel tensors and placeholder
tokens, the chat prompt, explicit 3-D (mrope) position ids, the vision tower call, and
one-slice-at-a-time language-model calls with a KV cache. The latent engine, the trainer and
the evaluator only use this interface (docs/engine.md).

Why explicit positions on every call: transformers falls back to 1-D RoPE without an error
when ``mm_token_type_ids`` are missing or when ``inputs_embeds`` come without
``position_ids``, and its cached ``rope_deltas`` is state left on the model that goes stale
between calls. ``run`` never lets the model infer a position.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from transformers import DynamicCache

from stormvl.backbones.tower_cache import TowerCache
from stormvl.errors import UserError
from stormvl.io import read_json

LATENT_TOKENS = ("<|latent_start|>", "<|latent|>", "<|latent_end|>")
DEFAULT_MAX_LATENTS = 64
META_FILE = "stormvl.json"
TEXT, VIDEO = 0, 2  # mm_token_type_ids values, as transformers uses them


@dataclass
class VideoSettings:
    """Frame resolution budget; stored in stormvl.json so evaluation reuses training's.

    Qwen2.5-VL reads the pixel bounds per frame, Qwen3-VL over the whole clip (as the HF
    processors of each family do). ``None`` takes the family default.
    """

    min_pixels: int | None = None  # lower pixel bound (per frame or per clip, see above)
    max_pixels: int | None = None  # upper pixel bound (per frame or per clip, see above)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> VideoSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(d or {}) - known
        if unknown:
            raise ValueError(f"unknown video settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**(d or {}))


@dataclass
class VideoInputs:
    """One video (or an oracle's thought frames) ready for the vision tower."""

    pixel_values: torch.Tensor  # (grid_t*grid_h*grid_w, C*temporal_patch*patch*patch) float32
    grid_thw: torch.Tensor  # (3,) long, in patches
    timestamps: np.ndarray  # (T_padded,) float64 seconds of the frames used (padding repeats)
    # exact seconds per temporal grid step = temporal_patch x mean sampled-frame interval
    # (video_processing.grid_interval); Qwen2.5-VL's temporal ids are decided from it
    grid_interval: Fraction
    n_tokens: int  # placeholder tokens in the prompt = prod(grid_thw) / merge**2
    # names the clip's content for a frozen tower's feature cache (None = never cached)
    key: str | None = None

    @property
    def second_per_grid(self) -> float:
        """``grid_interval`` as HF's ``second_per_grid_ts`` float (positions never use it)."""
        return float(self.grid_interval)


@dataclass
class Prompt:
    """One example, family-agnostic; the adapter turns it into its chat template."""

    videos: list[VideoInputs]  # shown in order at the top of the user turn
    text: str  # user text after the video(s)
    k: int = 0  # latent slots; 0 = direct answering (no latent tokens at all)
    target: str | None = None  # supervised assistant text; None at inference
    system: str | None = None  # None = the family's default system prompt


@dataclass
class Encoded:
    """A tokenised example before padding."""

    input_ids: list[int]
    mm_token_type_ids: list[int]
    labels: list[int]  # -100 except target tokens (and the closing <|im_end|>)
    position_ids: torch.Tensor  # (3, n) long
    videos: list[VideoInputs]
    k: int
    split: int  # first <|latent|> index, or (K = 0) the first target/generated index
    has_target: bool


@dataclass
class Batch:
    """A left-padded batch whose latent block (or assistant turn) starts at one column."""

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long, 0 on padding
    labels: torch.Tensor  # (B, L) long, -100 except supervised target tokens
    mm_token_type_ids: torch.Tensor  # (B, L) int, 0 text / 2 video
    position_ids: torch.Tensor  # (3, B, L) long, explicit mrope positions
    next_position: torch.Tensor  # (B,) long, max position + 1 per row (decoding continues here)
    videos: list[VideoInputs]  # all videos in row order
    video_rows: list[int]  # the row of each video
    k: int  # latent slots per row
    latent_col: int  # column of the first <|latent|>, -1 when K = 0
    target_col: int  # column of the first target token; L when there is no target

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def prefix_end(self) -> int:
        """End of the prefix pass: the first latent slot, or the whole prompt when K = 0."""
        return self.latent_col if self.k > 0 else self.target_col

    def to(self, device: torch.device | str) -> Batch:
        move = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}
        vids = [replace(v, pixel_values=v.pixel_values.to(device)) for v in self.videos]
        return replace(self, videos=vids, **move)


@dataclass
class Context:
    """A batch with its vision features merged into the input embeddings (one tower call)."""

    batch: Batch
    inputs_embeds: torch.Tensor  # (B, L, D)
    extras: dict[str, Any] = field(default_factory=dict)  # family-specific (DeepStack)


def mrope_positions(mm_types: list[int], blocks: list[torch.Tensor]) -> torch.Tensor:
    """3-D positions of one unpadded sequence: text continues at (largest id so far) + 1.

    Args:
        mm_types: per-token 0 (text) or 2 (video placeholder).
        blocks: per vision block, in order, its (3, n) ids relative to the block start.
    Returns:
        (3, len(mm_types)) long.
    Raises:
        ValueError: when placeholder runs and vision blocks do not match in count or size.
    """
    out, nxt, it, i = [], 0, iter(blocks), 0
    n = len(mm_types)
    while i < n:
        if mm_types[i] == TEXT:
            j = i
            while j < n and mm_types[j] == TEXT:
                j += 1
            out.append(torch.arange(nxt, nxt + j - i).view(1, -1).expand(3, -1))
            nxt += j - i
            i = j
            continue
        block = next(it, None)
        if block is None:
            raise ValueError("more video placeholder tokens than vision blocks")
        m = block.shape[1]
        if any(t == TEXT for t in mm_types[i : i + m]) or i + m > n:
            raise ValueError(f"a vision block of {m} tokens does not match its placeholder run")
        ids = block.to(torch.long) + nxt
        out.append(ids)
        nxt = int(ids.max()) + 1
        i += m
    if next(it, None) is not None:
        raise ValueError("fewer video placeholder tokens than vision blocks")
    return torch.cat(out, dim=1) if out else torch.zeros(3, 0, dtype=torch.long)


def add_latent_tokens(model, tokenizer) -> list[int]:
    """Add ``LATENT_TOKENS`` (if missing) and give them embeddings of existing tokens.

    Real checkpoints pad their vocabulary, so a new id may already have an (untrained) row;
    it is overwritten either way. The LM head is resized with the embeddings and, when
    untied, its new rows copied too. Returns the ids of the three tokens.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in LATENT_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing],
                             special_tokens=True)
        emb = model.get_input_embeddings()
        if len(tokenizer) > emb.num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        source = {"<|latent_start|>": "<|vision_start|>", "<|latent|>": "<|vision_pad|>",
                  "<|latent_end|>": "<|vision_end|>"}
        with torch.no_grad():
            for t in missing:
                new, old = tokenizer.convert_tokens_to_ids([t, source[t]])
                emb.weight[new] = emb.weight[old]
                if head is not None and head.weight is not emb.weight:
                    head.weight[new] = head.weight[old]
    return tokenizer.convert_tokens_to_ids(list(LATENT_TOKENS))


def _linear_patch_embed(self, pixels: torch.Tensor) -> torch.Tensor:
    # (N, C*tp*p*p) rows are laid out (C, tp, p, p), exactly the Conv3d kernel's flattening
    w = self.proj.weight  # (D, C, tp, p, p)
    return F.linear(pixels.to(w.dtype).reshape(-1, w[0].numel()), w.reshape(w.shape[0], -1), self.proj.bias)


def use_linear_patch_embed(patch_embed) -> None:
    """Run the tower's Conv3d patch embedding as the equivalent matmul.

    kernel == stride == one patch, so the convolution is a linear map of each flattened
    patch; on CPU the Conv3d path was the largest single cost of the tower in this
    project's CPU profiles. Weights stay in the Conv3d parameter, so checkpoints are unchanged.
    """
    patch_embed.forward = types.MethodType(_linear_patch_embed, patch_embed)


def _batched_vision_attention(self, hidden_states, cu_seqlens, position_embeddings=None,
                              max_seqlen=None, **kwargs):
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if (self.config._attn_implementation not in ("sdpa", "eager") or len(set(lengths)) != 1
            or (self.training and self.attention_dropout)):
        return type(self).forward(self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
    s, n, m = hidden_states.shape[0], len(lengths), lengths[0]
    qkv = self.qkv(hidden_states).reshape(s, 3, self.num_heads, -1).permute(1, 0, 2, 3)
    q, k, v = qkv.unbind(0)  # (S, H, d) each
    rope = sys.modules[type(self).__module__].apply_rotary_pos_emb_vision
    q, k = rope(q, k, *position_embeddings)
    q, k, v = (t.reshape(n, m, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # (n, H, m, d)
    out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)  # (n, H, m, d)
    return self.proj(out.transpose(1, 2).reshape(s, -1))


def use_batched_vision_attention(visual) -> None:
    """One attention call over all equal-length frames / windows instead of a Python loop.

    transformers' non-flash vision attention loops over frames (Qwen3-VL) or windows
    (Qwen2.5-VL) one sdpa call at a time; when every chunk has the same length (the usual
    case for video) they are stacked into a batch. Other cases use the original forward.
    """
    for mod in visual.modules():
        if type(mod).__name__.endswith("VisionAttention"):
            mod.forward = types.MethodType(_batched_vision_attention, mod)


def read_stormvl_meta(path: str | Path) -> dict | None:
    """The ``stormvl.json`` beside a checkpoint's weights, or None for a plain HF model."""
    p = Path(path) / META_FILE
    return read_json(p) if p.is_file() else None


class Backbone:
    """A Hugging Face video LLM behind the interface the latent engine uses.

    Subclasses set the class attributes and implement the ``_``-prefixed hooks; the
    prompt assembly, padding, slicing and cache logic here is shared by every family.
    """

    family: ClassVar[str]
    default_system: ClassVar[str | None] = None
    # transformers' classes that read a saved checkpoint's processor files (save_extras)
    processor_class: ClassVar[str]
    video_processor_class: ClassVar[str]
    # what the chat template writes for a video; the processor expands its <|video_pad|>
    template_video: ClassVar[str] = "<|vision_start|><|video_pad|><|vision_end|>"

    def __init__(self, model, tokenizer, video: VideoSettings | None = None,
                 max_latents: int = DEFAULT_MAX_LATENTS):
        self.model = model
        self.tokenizer = tokenizer
        self.video = video or VideoSettings()
        self.max_latents = max_latents
        # activation checkpointing per language-model call (cache-safe; see _run_checkpointed)
        self.checkpoint_slices = False
        # latent bottleneck: columns after the K latent slots (the answer) attend only to the
        # latent chain, so the video and question reach the answer only through the latents
        self.bottleneck = False
        # set while the tower is frozen (training): its output per clip key (tower_cache.py)
        self.tower_cache: TowerCache | None = None
        self.latent_start_id, self.latent_id, self.latent_end_id = add_latent_tokens(model, tokenizer)
        ids = tokenizer.convert_tokens_to_ids
        self.im_start_id, self.im_end_id = ids("<|im_start|>"), ids("<|im_end|>")
        self.vision_start_id, self.vision_end_id = ids("<|vision_start|>"), ids("<|vision_end|>")
        self.video_token_id = model.config.video_token_id
        if ids("<|video_pad|>") != self.video_token_id:
            raise ValueError("tokenizer and model config disagree on the <|video_pad|> id")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids("<|endoftext|>")
        self.eos_ids = {self.im_end_id, ids("<|endoftext|>")}
        # placeholders a reply must never contain (their LM-head rows start as copies)
        self.never_generate = [self.latent_start_id, self.latent_id, self.latent_end_id,
                               self.video_token_id, ids("<|image_pad|>"), ids("<|vision_pad|>")]
        vc = model.config.vision_config
        self.patch, self.merge, self.temporal_patch = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        use_linear_patch_embed(model.model.visual.patch_embed)
        use_batched_vision_attention(model.model.visual)

    # ----- family hooks -------------------------------------------------------------------
    @staticmethod
    def model_class():
        raise NotImplementedError

    @classmethod
    def tiny_video_settings(cls) -> VideoSettings:
        raise NotImplementedError

    def _resized(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        """Frame size after the family's smart resize (the only per-family step of
        preprocessing: Qwen2.5-VL bounds pixels per frame, Qwen3-VL per clip)."""
        raise NotImplementedError

    def _pixel_bounds(self) -> tuple[int, int]:
        lo = self.video.min_pixels or self.default_min_pixels
        hi = self.video.max_pixels or self.default_max_pixels
        return lo, hi

    def preprocess_video(self, frames, timestamps) -> VideoInputs:
        """(T, H, W, 3) uint8 frames + (T,) seconds -> tower inputs (the HF processor's steps)."""
        from stormvl.backbones import video_processing as vp

        x, ts = vp.check_frames(frames, timestamps)  # (T, 3, H, W) uint8
        interval = vp.grid_interval(ts, self.temporal_patch)
        h, w = self._resized(x.shape[0], x.shape[-2], x.shape[-1])
        x = vp.normalize(vp.resize_frames(x, h, w), self.image_mean, self.image_std)
        x, ts = vp.pad_time(x, ts, self.temporal_patch)
        pv, grid = vp.patchify(x, self.patch, self.merge, self.temporal_patch)
        n = grid[0] * grid[1] * grid[2] // self.merge**2
        return VideoInputs(pv, torch.tensor(grid), np.asarray(ts), interval, n)

    def video_token_count(self, num_frames: int, height: int, width: int) -> int:
        """Placeholder tokens a clip of this shape costs (for visual-token budgets)."""
        h, w = self._resized(num_frames, height, width)
        gt = -(-num_frames // self.temporal_patch)
        return gt * (h // self.patch) * (w // self.patch) // self.merge**2

    def _video_items(self, v: VideoInputs) -> list:
        """Prompt items of one video: str text, int special ids, ("video", n) placeholders."""
        raise NotImplementedError

    def _vision_blocks(self, v: VideoInputs) -> list[torch.Tensor]:
        """Relative (3, n) position ids of each placeholder run of one video."""
        raise NotImplementedError

    def _vision_forward(self, videos: list[VideoInputs]) -> tuple[torch.Tensor, dict]:
        """Run the tower on all videos: ((N_tokens, D) merged features, extras for ``run``)."""
        raise NotImplementedError

    def _lm_extra_kwargs(self, ctx: Context, start: int, n: int) -> dict:
        """Extra language-model kwargs for positions [start, start + n) (DeepStack)."""
        return {}

    # ----- shared ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def language_model(self):
        return self.model.model.language_model

    def encode_vision(self, videos: list[VideoInputs]) -> list[torch.Tensor]:
        """Merged vision features per video, each (n_tokens, D_text); Stage I targets use it."""
        if not videos:
            return []
        feats, _ = self._vision_forward(videos)
        return list(torch.split(feats, [v.n_tokens for v in videos]))

    def _tokenize(self, text: str) -> list[int]:
        # user text never turns into special tokens (a literal "<|im_end|>" stays text)
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def encode(self, prompt: Prompt) -> Encoded:
        """Chat template + tokenisation; see docs/engine.md for the layout."""
        k = prompt.k
        if not 0 <= k <= self.max_latents:
            raise ValueError(f"K={k} latent steps is outside [0, {self.max_latents}] (the hard cap)")
        system = self.default_system if prompt.system is None else prompt.system
        items: list = []
        if system:
            items += [self.im_start_id, "system\n" + system, self.im_end_id, "\n"]
        items += [self.im_start_id, "user\n"]
        for v in prompt.videos:
            items += self._video_items(v)
        items += [prompt.text, self.im_end_id, "\n", self.im_start_id, "assistant\n"]
        if k:
            items += [self.latent_start_id] + [self.latent_id] * k + [self.latent_end_id]
        ids, mm = self._assemble(items)
        split = len(ids) - (k + 1) if k else len(ids)
        labels = [-100] * len(ids)
        if prompt.target is not None:
            tgt = self._tokenize(prompt.target) + [self.im_end_id]
            ids, mm, labels = ids + tgt, mm + [TEXT] * len(tgt), labels + tgt
        blocks = [b for v in prompt.videos for b in self._vision_blocks(v)]
        pos = mrope_positions(mm, blocks)
        return Encoded(ids, mm, labels, pos, list(prompt.videos), k, split, prompt.target is not None)

    def _assemble(self, items: list) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        mm: list[int] = []
        text = ""
        for it in [*items, None]:
            if isinstance(it, str):
                text += it  # adjacent text is tokenised as one piece, as a full-string encode would
                continue
            if text:
                t = self._tokenize(text)
                ids += t
                mm += [TEXT] * len(t)
                text = ""
            if isinstance(it, int):
                ids.append(it)
                mm.append(TEXT)
            elif isinstance(it, tuple):  # ("video", n)
                ids += [self.video_token_id] * it[1]
                mm += [VIDEO] * it[1]
        return ids, mm

    def collate(self, examples: list[Encoded]) -> Batch:
        """Left-pad so every row's split column lines up; right-pad the targets."""
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        ks = {e.k for e in examples}
        if len(ks) > 1:
            raise ValueError(f"all examples in a batch must share K, got {sorted(ks)}")
        if len({e.has_target for e in examples}) > 1:
            raise ValueError("a batch mixes examples with and without targets")
        k, b = ks.pop(), len(examples)
        s = max(e.split for e in examples)
        length = s + max(len(e.input_ids) - e.split for e in examples)
        ids = torch.full((b, length), self.pad_id, dtype=torch.long)
        attn = torch.zeros(b, length, dtype=torch.long)
        labels = torch.full((b, length), -100, dtype=torch.long)
        mm = torch.zeros(b, length, dtype=torch.int32)
        pos = torch.ones(3, b, length, dtype=torch.long)
        nxt = torch.zeros(b, dtype=torch.long)
        for r, e in enumerate(examples):
            a, n = s - e.split, len(e.input_ids)
            ids[r, a : a + n] = torch.tensor(e.input_ids)
            attn[r, a : a + n] = 1
            labels[r, a : a + n] = torch.tensor(e.labels)
            mm[r, a : a + n] = torch.tensor(e.mm_token_type_ids, dtype=torch.int32)
            pos[:, r, a : a + n] = e.position_ids
            nxt[r] = int(e.position_ids.max()) + 1
        target_col = (s + (k + 1 if k else 0)) if examples[0].has_target else length
        return Batch(
            input_ids=ids, attention_mask=attn, labels=labels, mm_token_type_ids=mm,
            position_ids=pos, next_position=nxt,
            videos=[v for e in examples for v in e.videos],
            video_rows=[r for r, e in enumerate(examples) for _ in e.videos],
            k=k, latent_col=s if k else -1, target_col=target_col,
        )

    def check_batch(self, batch: Batch) -> None:
        """Refuse batches that would silently run with wrong positions or placeholders."""
        if batch.position_ids is None or batch.position_ids.shape != (3, *batch.input_ids.shape):
            raise ValueError("batch.position_ids must be explicit (3, B, L) mrope positions")
        if batch.mm_token_type_ids is None or batch.mm_token_type_ids.shape != batch.input_ids.shape:
            raise ValueError("batch.mm_token_type_ids is missing or has the wrong shape")
        is_video = batch.input_ids == self.video_token_id
        if not torch.equal(is_video, batch.mm_token_type_ids == VIDEO):
            raise ValueError("mm_token_type_ids do not mark exactly the <|video_pad|> tokens")
        n = int(is_video.sum())
        want = sum(v.n_tokens for v in batch.videos)
        if n != want:
            raise ValueError(f"{n} video placeholder tokens but the videos give {want} features")
        if batch.k > self.max_latents:
            raise ValueError(f"K={batch.k} exceeds the hard cap of {self.max_latents} latent steps")

    def prepare(self, batch: Batch) -> Context:
        """Input embeddings with the vision features scattered in (the tower runs once)."""
        self.check_batch(batch)
        embeds = self.model.get_input_embeddings()(batch.input_ids)  # (B, L, D)
        extras: dict = {}
        if batch.videos:
            if self.tower_cache is None:
                feats, extras = self._vision_forward(batch.videos)  # (N, D)
            else:
                feats, extras = self.tower_cache.features(batch.videos, self._vision_forward, self.device)
            mask = (batch.input_ids == self.video_token_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
        return Context(batch, embeds, extras)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config.text_config)

    def positions(self, ctx: Context, start: int, n: int) -> torch.Tensor:
        """(3, B, n) positions for sequence columns [start, start+n); past the prompt they
        continue as text at each row's max + 1 (decoded tokens)."""
        b = ctx.batch
        end, length = start + n, b.length
        parts = []
        if start < length:
            parts.append(b.position_ids[:, :, start : min(end, length)])
        if end > length:
            extra = torch.arange(max(start, length) - length, end - length, device=b.next_position.device)
            parts.append((b.next_position[:, None] + extra[None, :]).unsqueeze(0).expand(3, -1, -1))
        return torch.cat(parts, dim=2)

    def run(self, ctx: Context, cache: DynamicCache | None, start: int, embeds: torch.Tensor) -> torch.Tensor:
        """One language-model call over columns [start, start + n) with the shared cache.

        Args:
            ctx: from ``prepare``.
            cache: holds exactly the first ``start`` columns; None = no cache (a single
                pass from column 0, where transformers' own activation checkpointing works).
            start: first column of this slice.
            embeds: (B, n, D) input embeddings of the slice.
        Returns:
            (B, n, D) final post-norm hidden states.
        """
        n = embeds.shape[1]
        seen = cache.get_seq_length() if cache is not None else 0
        if seen != start:
            raise ValueError(f"stale cache: it holds {seen} positions but the slice starts at {start}")
        lm = self.language_model
        training = lm.training and torch.is_grad_enabled()
        if cache is not None and training and getattr(lm, "gradient_checkpointing", False):
            # transformers' checkpointed layers drop past_key_values: every slice after the
            # first would attend only to itself, with no error
            raise ValueError("transformers gradient checkpointing drops the KV cache the latent chain "
                             "needs; call model.activation_checkpointing_disable() and set "
                             "backbone.checkpoint_slices = True instead")
        b = ctx.batch
        end = start + n
        mask = b.attention_mask[:, : min(end, b.length)]
        if end > b.length:
            mask = torch.cat([mask, mask.new_ones(b.size, end - b.length)], dim=1)
        mask = self.bottleneck_mask(b, start, mask, embeds.dtype) if self.bottleneck else mask
        kwargs = dict(position_ids=self.positions(ctx, start, n), attention_mask=mask,
                      use_cache=cache is not None, **self._lm_extra_kwargs(ctx, start, n))
        if cache is not None and training and self.checkpoint_slices:
            return self._run_checkpointed(cache, embeds, kwargs)
        return lm(inputs_embeds=embeds, past_key_values=cache, **kwargs).last_hidden_state

    def bottleneck_mask(self, b: Batch, start: int, keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The 4-D mask of a slice whose queries after the latent slots see only the latent chain.

        Columns after the K slots (``<|latent_end|>``, the assistant turn, decoded tokens) may
        attend to ``<|latent_start|>``, the slots and each other, but not to the video or the
        question before them: every token of those attends to the video, so hiding the video
        alone would leave a path around the latents.

        Args:
            b: the batch (its K and latent column).
            start: first column of the slice; ``keys.shape[1]`` is its end.
            keys: (B, end) 1 where a key column is a real token, 0 on padding.
            dtype: of the activations (eager attention adds a float mask).
        Returns:
            ``keys`` unchanged when no query of the slice is past the latents, else a
            (B, 1, n, end) mask: bool (True = attend) for sdpa, additive float for eager.
        """
        end = keys.shape[1]
        first = b.latent_col + b.k  # first column that reads the prompt through the latents
        if b.k == 0 or end <= first:
            return keys
        dev = keys.device
        q = torch.arange(start, end, device=dev)[:, None]  # (n, 1)
        kv = torch.arange(end, device=dev)[None, :]  # (1, end)
        hidden = (q >= first) & (kv < b.latent_col - 1)  # (n, end): the prompt before the chain
        allowed = ((kv <= q) & ~hidden)[None] & keys.bool()[:, None, :]  # (B, n, end)
        # a padding query sees no key at all: let it see everything (its output is never
        # used, and an all-masked softmax row would be NaN), as transformers' own masks do
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        allowed = allowed[:, None]  # (B, 1, n, end)
        if self.language_model.config._attn_implementation == "eager":
            return torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(
                ~allowed, torch.finfo(dtype).min)
        return allowed

    def _run_checkpointed(self, cache: DynamicCache, embeds: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """One slice under activation checkpointing, cache-safe.

        The slice runs on a temporary cache rebuilt from the saved past keys / values, and
        returns its new keys / values as outputs, so the backward replay cannot append to
        the shared cache a second time.
        """
        n = embeds.shape[1]
        past = [t for layer in cache.layers if layer.is_initialized for t in (layer.keys, layer.values)]

        def fn(x, *flat):
            tmp = self.new_cache()
            for i in range(0, len(flat), 2):
                tmp.update(flat[i], flat[i + 1], i // 2)
            h = self.language_model(inputs_embeds=x, past_key_values=tmp, **kwargs).last_hidden_state
            new = [t[:, :, -n:] for layer in tmp.layers for t in (layer.keys, layer.values)]
            return (h, *new)

        h, *new = torch.utils.checkpoint.checkpoint(fn, embeds, *past, use_reentrant=False)
        for i in range(0, len(new), 2):
            cache.update(new[i], new[i + 1], i // 2)
        return h

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    @classmethod
    def load_weights(cls, path_or_id: str | Path, dtype: torch.dtype, trust_remote_code: bool = False):
        """``model_class().from_pretrained`` from safetensors only, refusing weights that do not
        fit the config (a config of one family with the weights of another): transformers
        would re-initialise the missing tensors with a warning, or raise a traceback.

        Raises:
            UserError: no loadable safetensors weights, or weights of another architecture.
        """
        try:
            model, info = cls.model_class().from_pretrained(
                path_or_id, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
                ignore_mismatched_sizes=True, output_loading_info=True)
        except OSError as exc:  # e.g. a hub id with pickle weights only
            raise UserError(f"{path_or_id}: cannot load safetensors weights "
                            f"({' '.join(str(exc).split())})") from None
        missing, other = sorted(info["missing_keys"]), sorted(k for k, *_ in info["mismatched_keys"])
        if missing or other:
            example = (other or missing)[0]
            raise UserError(
                f"{path_or_id}: its weights do not fit its config.json ({cls.family}): "
                f"{len(missing)} tensors missing, {len(other)} of another shape, "
                f"{len(info['unexpected_keys'])} unexpected (e.g. {example}); the config and "
                "the weights come from different models")
        return model

    @classmethod
    def chat_template(cls) -> str:
        """``encode``'s layout at K = 0 as a Jinja chat template, for tools that build prompts
        with transformers' processor (which expands each ``<|video_pad|>`` of a video)."""
        system = ""
        if cls.default_system:
            assert "'" not in cls.default_system
            system = ("{%- if loop.first and message['role'] != 'system' -%}"
                      f"{{{{- '<|im_start|>system\\n{cls.default_system}<|im_end|>\\n' -}}}}"
                      "{%- endif -%}")
        return (
            "{%- for message in messages -%}" + system +
            "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
            "{%- if message['content'] is string -%}{{- message['content'] -}}"
            "{%- else -%}{%- for part in message['content'] -%}"
            "{%- if part['type'] == 'video' or 'video' in part -%}"
            f"{{{{- '{cls.template_video}' -}}}}"
            "{%- elif part['type'] == 'image' or 'image' in part -%}"
            "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
            "{%- elif 'text' in part -%}{{- part['text'] -}}"
            "{%- endif -%}{%- endfor -%}{%- endif -%}"
            "{{- '<|im_end|>\\n' -}}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
        )

    def processor_configs(self, video_config: dict | None = None) -> tuple[dict, dict]:
        """``preprocessor_config.json`` and ``video_preprocessor_config.json`` as transformers
        writes them for this family, with the pixel bounds this model runs at and, given the
        run's ``video_config``, the frame sampling it was trained with.

        Written by hand: transformers' Qwen video processor classes need torchvision, which
        does not install beside this torch. The image bounds are the video's (images are
        not trained); Qwen2.5-VL reads them per frame, Qwen3-VL per clip, as ours do.
        """
        lo, hi = self._pixel_bounds()
        common = {
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "merge_size": self.merge, "patch_size": self.patch,
            "temporal_patch_size": self.temporal_patch, "resample": 3,  # bicubic
            "rescale_factor": 1 / 255, "size": {"longest_edge": hi, "shortest_edge": lo},
            "processor_class": self.processor_class,
        }
        # transformers 4.x reads the image bounds from min_pixels / max_pixels
        image = {**common, "image_processor_type": "Qwen2VLImageProcessor",
                 "min_pixels": lo, "max_pixels": hi}
        # no extra per-frame cap: the bounds above are the whole rule, as in stormvl
        video = {**common, "video_processor_type": self.video_processor_class,
                 "return_metadata": False, "cap_pixels_per_frame": False}
        if video_config:
            n = video_config.get("num_frames")
            video.update(do_sample_frames=True, num_frames=n,
                         fps=None if n else video_config.get("fps"))
            if not n:
                video["max_frames"] = video_config.get("max_frames")
        return image, video

    def save_extras(self, path: Path, stormvl_meta: dict | None = None) -> None:
        """Everything beside the weights: tokenizer with the chat template, the processor
        configs (so ``AutoProcessor.from_pretrained`` reads the folder), and stormvl.json."""
        from stormvl import __version__

        meta = {"stormvl_version": __version__, "backbone": self.family,
                "video": self.video.to_dict(), "max_latents": self.max_latents,
                **(stormvl_meta or {})}
        self.tokenizer.chat_template = self.chat_template()
        self.tokenizer.save_pretrained(str(path))  # writes chat_template.jinja too
        image, video = self.processor_configs(meta.get("video_config"))
        for name, d in (("preprocessor_config.json", image), ("video_preprocessor_config.json", video)):
            (path / name).write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
        (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def save(self, out_dir: str | Path, stormvl_meta: dict | None = None) -> Path:
        """HF-format weights + ``save_extras``, written to a temp dir then renamed."""
        out = Path(out_dir)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp, safe_serialization=True)
        self.save_extras(tmp, stormvl_meta)
        old = out.with_name(out.name + ".old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return out
