"""The latent engine: training forward and bounded rollout over any ``Backbone``.

Layout (docs/engine.md): ``... assistant\\n <|latent_start|> <|latent|> x K <|latent_end|>
target <|im_end|>``; batches are left-padded so the first ``<|latent|>`` sits in one column.

Passes (Coconut's recurrence, with a KV cache shared by all of them):
  1. prefix ``[0, latent_col)``: its last position is ``<|latent_start|>``; the vision tower has
     already run once in ``Backbone.prepare``;
  2. K - 1 one-position passes: the input of latent slot i is the final post-norm hidden
     state of the position before it (optionally through a projector), no detach, so
     gradients flow through the whole chain;
  3. one pass over the rest: the last latent slot, ``<|latent_end|>`` and the target.
Latent state k (what the trainer aligns and the diagnostics probe) is the hidden state fed
into slot k. K = 0 is direct answering through the same code (one pass).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from stormvl.backbones.base import Backbone, Batch, Context


def format_question(question: str, options: list[str] | None = None) -> str:
    """Default user text: the question, lettered options, and the answer-format instruction."""
    if not options:
        return question
    letters = "ABCDEFGHIJ"
    if len(options) > len(letters):
        raise ValueError(f"at most {len(letters)} options are supported, got {len(options)}")
    lines = [question] + [f"{letters[i]}. {o}" for i, o in enumerate(options)]
    lines.append("Answer with the option's letter from the given choices directly.")
    return "\n".join(lines)


@dataclass
class TrainOutput:
    loss: torch.Tensor  # scalar mean CE over supervised tokens
    logits: torch.Tensor  # (B, L - target_col, V): logits[:, j] predicts column target_col + j
    latents: torch.Tensor  # (B, K, D) hidden states fed into the latent slots
    hidden: torch.Tensor  # (B, L, D) final hidden state of every column
    n_tokens: int  # supervised tokens in the batch


@dataclass
class GenerateOutput:
    texts: list[str]
    token_ids: list[list[int]]  # generated ids, stop token excluded
    latents: torch.Tensor  # (B, K, D)
    timings: dict[str, float] = field(default_factory=dict)  # prefill / rollout / decode seconds
    n_generated: list[int] = field(default_factory=list)  # decode steps per row, stop token included


def _check_k(bb: Backbone, batch: Batch) -> None:
    if batch.k > bb.max_latents:
        raise ValueError(f"K={batch.k} exceeds the hard cap of {bb.max_latents} latent steps")
    if batch.k and (batch.latent_col < 1 or not bool((batch.input_ids[:, batch.latent_col - 1]
                                                      == bb.latent_start_id).all())):
        raise ValueError("batch.latent_col does not follow <|latent_start|> in every row")


def _feed(h: torch.Tensor, projector: nn.Module | None) -> torch.Tensor:
    return h if projector is None else projector(h)


def rollout(
    bb: Backbone, ctx: Context, cache, projector: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Run the whole prompt of ``ctx`` through the cache with the latent recurrence.

    Returns:
        hidden: (B, L, D) final hidden states of every column.
        latents: (B, K, D) the states fed into the latent slots.
        pieces: the per-pass hidden states (prefix, steps, rest), for timing splits.
    """
    b, embeds = ctx.batch, ctx.inputs_embeds
    if b.k == 0:
        h = bb.run(ctx, cache, 0, embeds)
        return h, embeds.new_zeros(b.size, 0, embeds.shape[-1]), [h]
    s, k = b.latent_col, b.k
    pieces = [bb.run(ctx, cache, 0, embeds[:, :s])]  # (B, s, D)
    last = pieces[0][:, -1:]  # (B, 1, D) state after <|latent_start|>
    latents = [last]
    for i in range(k - 1):
        last = bb.run(ctx, cache, s + i, _feed(last, projector))
        pieces.append(last)
        latents.append(last)
    rest = torch.cat([_feed(last, projector), embeds[:, s + k :]], dim=1)
    pieces.append(bb.run(ctx, cache, s + k - 1, rest))
    return torch.cat(pieces, dim=1), torch.cat(latents, dim=1), pieces


def _loss(bb: Backbone, batch: Batch, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    t = batch.target_col
    if t >= batch.length:
        raise ValueError("forward_train needs a batch built from prompts with a target")
    logits = bb.lm_head(hidden[:, t - 1 : -1])  # (B, L - t, V)
    labels = batch.labels[:, t:]
    n = int((labels != -100).sum())
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100, reduction="sum") / max(n, 1)
    return loss, logits, n


def forward_train(bb: Backbone, batch: Batch, projector: nn.Module | None = None) -> TrainOutput:
    """Training forward with the cached latent chain; gradients flow through every step."""
    _check_k(bb, batch)
    ctx = bb.prepare(batch)
    # K = 0 needs no cache: one pass, where transformers' activation checkpointing applies
    hidden, latents, _ = rollout(bb, ctx, bb.new_cache() if batch.k else None, projector)
    loss, logits, n = _loss(bb, batch, hidden)
    return TrainOutput(loss, logits, latents, hidden, n)


def naive_rollout(
    bb: Backbone, ctx: Context, projector: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference rollout: recompute the whole sequence, without a cache, at every latent step.

    What Coconut's reference code does; slow, used to prove the cached rollout equal.
    Returns hidden (B, L, D), latents (B, K, D) and the input embeddings with the latent
    slots filled (B, L, D).
    """
    b, embeds = ctx.batch, ctx.inputs_embeds
    latents = []
    for i in range(b.k):
        s = b.latent_col + i
        h = bb.run(ctx, bb.new_cache(), 0, embeds[:, :s])[:, -1:]  # (B, 1, D)
        latents.append(h)
        # out-of-place write keeps the chain differentiable
        embeds = torch.cat([embeds[:, :s], _feed(h, projector), embeds[:, s + 1 :]], 1)
    hidden = bb.run(ctx, bb.new_cache(), 0, embeds)
    lat = torch.cat(latents, 1) if latents else embeds.new_zeros(b.size, 0, embeds.shape[-1])
    return hidden, lat, embeds


def forward_naive(bb: Backbone, batch: Batch, projector: nn.Module | None = None) -> TrainOutput:
    """``forward_train`` computed with ``naive_rollout`` (the equivalence reference)."""
    _check_k(bb, batch)
    hidden, latents, _ = naive_rollout(bb, bb.prepare(batch), projector)
    loss, logits, n = _loss(bb, batch, hidden)
    return TrainOutput(loss, logits, latents, hidden, n)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
          generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids (greedy, or temperature / nucleus sampling)."""
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    bb: Backbone,
    batch: Batch,
    max_new_tokens: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    projector: nn.Module | None = None,
) -> GenerateOutput:
    """Bounded latent rollout (K from the batch, capped) then cached decoding, batched.

    Timings: ``prefill`` = vision tower + prefix pass, ``rollout`` = the K latent steps
    (and ``<|latent_end|>``), ``decode`` = every generated token (LM head included).
    """
    _check_k(bb, batch)
    if batch.target_col != batch.length:
        raise ValueError("generate needs a batch built from prompts without a target")
    dev = bb.device
    _sync(dev)
    t0 = time.perf_counter()
    ctx = bb.prepare(batch)
    cache = bb.new_cache()
    s = batch.prefix_end
    if batch.k:
        prefix = bb.run(ctx, cache, 0, ctx.inputs_embeds[:, :s])
        _sync(dev)
        t1 = time.perf_counter()
        last, latents = prefix[:, -1:], [prefix[:, -1:]]
        for i in range(batch.k - 1):
            last = bb.run(ctx, cache, s + i, _feed(last, projector))
            latents.append(last)
        rest = torch.cat([_feed(last, projector), ctx.inputs_embeds[:, s + batch.k :]], 1)
        h = bb.run(ctx, cache, s + batch.k - 1, rest)[:, -1]
        lat = torch.cat(latents, 1)
    else:
        h = bb.run(ctx, cache, 0, ctx.inputs_embeds)[:, -1]
        _sync(dev)
        t1 = time.perf_counter()
        lat = h.new_zeros(batch.size, 0, h.shape[-1])
    _sync(dev)
    t2 = time.perf_counter()
    out, done = [], torch.zeros(batch.size, dtype=torch.bool, device=dev)
    n_gen = torch.zeros(batch.size, dtype=torch.long, device=dev)
    eos = torch.tensor(sorted(bb.eos_ids), device=dev)
    pos = batch.length
    banned = torch.tensor(bb.never_generate, device=dev)
    for step in range(max_new_tokens):
        logits = bb.lm_head(h).index_fill(-1, banned, float("-inf"))  # (B, V)
        tok = _pick(logits, do_sample, temperature, top_p, generator)
        tok = torch.where(done, torch.full_like(tok, bb.pad_id), tok)
        n_gen += (~done).long()
        out.append(tok)
        done = done | torch.isin(tok, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        h = bb.run(ctx, cache, pos, bb.embed_tokens(tok)[:, None])[:, -1]
        pos += 1
    _sync(dev)
    t3 = time.perf_counter()
    ids = torch.stack(out, 1).tolist() if out else [[] for _ in range(batch.size)]
    token_ids = []
    for row in ids:
        cut = next((i for i, t in enumerate(row) if t in bb.eos_ids), len(row))
        token_ids.append(row[:cut])
    texts = bb.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
    return GenerateOutput(texts, token_ids, lat, {"prefill": t1 - t0, "rollout": t2 - t1,
                                                   "decode": t3 - t2}, n_gen.tolist())


class LatentModel(nn.Module):
    """The backbone's model (+ optional projector) as one module: wrap THIS with
    accelerate / DDP / FSDP so that ``forward`` is the call the wrapper sees."""

    def __init__(self, backbone: Backbone, projector: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model
        self.projector = projector

    def forward(self, batch: Batch) -> TrainOutput:
        return forward_train(self.backbone, batch, self.projector)

    @torch.no_grad()
    def generate(self, batch: Batch, **kwargs) -> GenerateOutput:
        return generate(self.backbone, batch, projector=self.projector, **kwargs)
