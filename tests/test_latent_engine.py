"""The latent engine's proofs of correctness, on both backbone families (fp32, CPU).

- cached rollout == naive full recompute (logits, latents, loss, gradients within 1e-5);
- a left-padded batch == its examples one by one (training forward and generation);
- K = 0 == the plain HF model's forward on the same prompt;
- cached generation == a greedy loop that recomputes the whole sequence per token.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from stormvl.backbones import Prompt
from stormvl.backbones.tiny import build_tiny, random_clip
from stormvl.backbones.tower_cache import TowerCache
from stormvl.latent import LatentModel, forward_naive, forward_train, generate, naive_rollout

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
TOL = dict(atol=1e-5, rtol=0)


@pytest.fixture(scope="module", params=FAMILIES)
def bb(request):
    return build_tiny(request.param, "tiny", seed=0)


def _video(bb, n, h=56, w=56, seed=0):
    frames, ts = random_clip(n, h, w, seed=seed)
    return bb.preprocess_video(frames, ts)


def _prompts(bb, k, target=True):
    """Rows of different lengths: one video, a 2-video (oracle-style) row, a text-only row."""
    v1, v2, v3 = _video(bb, 4, seed=1), _video(bb, 2, 56, 84, seed=2), _video(bb, 3, seed=3)
    rows = [
        ([v1], "Which cup hides the ball?\nA. red\nB. blue", "A"),
        ([v3, v2], "Where does it exit?", "the ball goes left so C"),
        ([], "Count the events in this rather long question text please", "B"),
    ]
    return [Prompt(v, t, k=k, target=a if target else None) for v, t, a in rows]


def _batch(bb, k, target=True, rows=None):
    ps = _prompts(bb, k, target)
    ps = ps if rows is None else [ps[i] for i in rows]
    return bb.collate([bb.encode(p) for p in ps])


@pytest.mark.parametrize("k", [0, 1, 4])
def test_cached_equals_naive(bb, k):
    batch = _batch(bb, k)
    with torch.no_grad():
        a, b = forward_train(bb, batch), forward_naive(bb, batch)
    torch.testing.assert_close(a.logits, b.logits, **TOL)
    torch.testing.assert_close(a.latents, b.latents, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    assert a.latents.shape == (3, k, bb.hidden_size)
    assert a.n_tokens == int((batch.labels != -100).sum()) > 3


def _grads(bb, fn, batch, projector=None):
    bb.model.train()
    bb.model.zero_grad(set_to_none=True)
    if projector is not None:
        projector.zero_grad(set_to_none=True)
    out = fn(bb, batch, projector)
    (out.loss + 0.1 * out.latents.pow(2).mean()).backward()  # gradients through latents too
    params = list(bb.model.named_parameters()) + (
        list(projector.named_parameters()) if projector is not None else [])
    g = {n: p.grad.clone() for n, p in params if p.grad is not None}
    bb.model.eval()
    return g


def _assert_grads_equal(bb, proj=None):
    batch = _batch(bb, 3)
    ga, gb = _grads(bb, forward_train, batch, proj), _grads(bb, forward_naive, batch, proj)
    assert ga.keys() == gb.keys() and len(ga) > 10
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], **TOL, msg=name)
    # the chain is differentiable end to end: the vision tower gets gradients too
    assert any("visual" in n and ga[n].abs().sum() > 0 for n in ga)
    return ga


def test_gradients_cached_equal_naive(bb):
    _assert_grads_equal(bb)


def test_gradients_with_projector_cached_equal_naive():
    """The optional projector is family-agnostic engine code: one family suffices."""
    bb = build_tiny("qwen2_5_vl", "tiny", seed=2)
    torch.manual_seed(0)
    proj = torch.nn.Linear(bb.hidden_size, bb.hidden_size)
    g = _assert_grads_equal(bb, proj)
    assert g["weight"].abs().sum() > 0 and g["bias"].abs().sum() > 0


@pytest.mark.parametrize("k", [0, 3])
def test_left_padded_batch_equals_single_examples(bb, k):
    batch = _batch(bb, k)
    with torch.no_grad():
        out = forward_train(bb, batch)
        for r in range(3):
            one = forward_train(bb, _batch(bb, k, rows=[r]))
            n = one.logits.shape[1]
            torch.testing.assert_close(out.logits[r, :n], one.logits[0], **TOL)
            torch.testing.assert_close(out.latents[r], one.latents[0], **TOL)
            cols = (batch.labels[r] != -100).sum()
            assert cols == (one.logits.shape[1] if r == 0 else cols)


def test_k0_equals_plain_hf_forward(bb):
    batch = _batch(bb, 0)
    with torch.no_grad():
        ours = forward_train(bb, batch)
        kwargs = dict(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask,
            pixel_values_videos=torch.cat([v.pixel_values for v in batch.videos]),
            video_grid_thw=torch.stack([v.grid_thw for v in batch.videos]),
            mm_token_type_ids=batch.mm_token_type_ids, position_ids=batch.position_ids,
        )
        if bb.family == "qwen2_5_vl":
            kwargs["second_per_grid_ts"] = torch.tensor([v.second_per_grid for v in batch.videos])
        hf = bb.model(**kwargs).logits
    t = batch.target_col
    torch.testing.assert_close(ours.logits, hf[:, t - 1 : -1], **TOL)
    if bb.family == "qwen3_vl":  # transformers' own positions agree for Qwen3-VL
        del kwargs["position_ids"]
        bb.model.model.rope_deltas = None
        with torch.no_grad():
            hf2 = bb.model(**kwargs).logits
        sup = batch.labels[:, t:] != -100  # right padding gets other (unused) positions there
        torch.testing.assert_close(ours.logits[sup], hf2[:, t - 1 : -1][sup], **TOL)


def _naive_greedy(bb, batch, steps):
    """Greedy decoding that recomputes the whole sequence (no cache) for every token."""
    with torch.no_grad():
        ctx = bb.prepare(batch)
        _, _, embeds = naive_rollout(bb, ctx)  # latent slots filled by the naive chain
        toks = []
        for _ in range(steps):
            h = bb.run(ctx, bb.new_cache(), 0, embeds)[:, -1]
            logits = bb.lm_head(h)
            logits[:, bb.never_generate] = float("-inf")
            t = logits.argmax(-1)
            toks.append(t)
            embeds = torch.cat([embeds, bb.embed_tokens(t)[:, None]], 1)
    return torch.stack(toks, 1).tolist()


@pytest.mark.parametrize("k", [0, 3])
def test_generate_equals_naive_greedy_and_single_rows(bb, k):
    batch = _batch(bb, k, target=False)
    bb.eos_ids_backup = bb.eos_ids
    bb.eos_ids = set()  # random weights: decode the full budget
    try:
        gen = generate(bb, batch, max_new_tokens=6)
        assert [len(t) for t in gen.token_ids] == [6, 6, 6] and gen.n_generated == [6, 6, 6]
        assert gen.token_ids == _naive_greedy(bb, batch, 6)
        for r in range(3):
            one = generate(bb, _batch(bb, k, target=False, rows=[r]), max_new_tokens=6)
            assert one.token_ids[0] == gen.token_ids[r]
            torch.testing.assert_close(one.latents[0], gen.latents[r], **TOL)
    finally:
        bb.eos_ids = bb.eos_ids_backup
    assert set(gen.timings) == {"prefill", "rollout", "decode"}
    assert gen.latents.shape == (3, k, bb.hidden_size)


def test_generate_latents_match_training_forward(bb):
    with torch.no_grad():
        train = forward_train(bb, _batch(bb, 4))
        gen = generate(bb, _batch(bb, 4, target=False), max_new_tokens=1)
    torch.testing.assert_close(gen.latents, train.latents, **TOL)


def test_sampling_is_seeded(bb):
    batch = _batch(bb, 2, target=False)
    g1 = generate(bb, batch, 5, do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(3))
    g2 = generate(bb, batch, 5, do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert g1.token_ids == g2.token_ids


def test_latent_model_module(bb):
    proj = torch.nn.Linear(bb.hidden_size, bb.hidden_size)
    m = LatentModel(bb, proj)
    assert {n.split(".")[0] for n, _ in m.named_parameters()} == {"model", "projector"}
    with torch.no_grad():
        out = m(_batch(bb, 2))
    assert torch.isfinite(out.loss)


def test_deepstack_reaches_every_slice():
    """Qwen3-VL: dropping DeepStack inputs changes the logits (the slice path carries them)."""
    bb = build_tiny("qwen3_vl", "tiny")
    batch = _batch(bb, 2)
    with torch.no_grad():
        full = forward_train(bb, batch).logits
        orig = bb._lm_extra_kwargs
        bb._lm_extra_kwargs = lambda ctx, s, n: {}
        try:
            without = forward_train(bb, batch).logits
        finally:
            bb._lm_extra_kwargs = orig
    assert (full - without).abs().max() > 1e-4


def test_checkpointed_slices_give_the_same_gradients():
    bb = build_tiny("qwen3_vl", "tiny", seed=3)
    batch = _batch(bb, 3)
    plain = _grads(bb, forward_train, batch)
    bb.checkpoint_slices = True
    try:
        ckpt = _grads(bb, forward_train, batch)
    finally:
        bb.checkpoint_slices = False
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], **TOL, msg=name)


def test_transformers_gradient_checkpointing_is_refused():
    """It would silently drop the KV cache between latent passes."""
    bb = build_tiny("qwen2_5_vl", "tiny")
    bb.model.activation_checkpointing_enable()
    bb.model.train()
    try:
        with pytest.raises(ValueError, match="drops the KV cache"):
            forward_train(bb, _batch(bb, 2))
        out = forward_train(bb, _batch(bb, 0))  # K = 0 runs without a cache: allowed
        out.loss.backward()
    finally:
        bb.model.activation_checkpointing_disable()
        bb.model.eval()


@pytest.fixture
def bottleneck(bb):
    """The same backbone with the latent bottleneck on (restored afterwards)."""
    bb.bottleneck = True
    yield bb
    bb.bottleneck = False


def test_bottleneck_mask_hides_the_prompt_from_the_answer_only(bb):
    batch = _batch(bb, 3)
    s, k, length = batch.latent_col, batch.k, batch.length
    keys = batch.attention_mask
    bb.bottleneck = True
    try:
        # slices that end at the last slot need no 4-D mask
        assert torch.equal(bb.bottleneck_mask(batch, 0, keys[:, : s + k], torch.float32), keys[:, : s + k])
        m = bb.bottleneck_mask(batch, 0, keys, torch.float32)[:, 0]  # (B, L, L) True = attend
    finally:
        bb.bottleneck = False
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for r in range(3):
        real = keys[r].bool()
        want = causal & real[None, :]
        want[s + k :, : s - 1] = False  # the answer reads the prompt only through the chain
        rows = real.nonzero().squeeze(1)  # padding queries are free (never read)
        assert torch.equal(m[r][rows], want[rows])
        assert m[r][s + k :, s - 1 : s + k].all()  # <|latent_start|> and every slot stay visible
        vid = (batch.mm_token_type_ids[r] == 2).nonzero().squeeze(1)
        assert not m[r][s + k :][:, vid].any() and m[r][s - 1][vid].all()


def test_bottleneck_cached_equals_naive_and_single_rows(bottleneck):
    bb = bottleneck
    batch = _batch(bb, 3)
    with torch.no_grad():
        a, b = forward_train(bb, batch), forward_naive(bb, batch)
        torch.testing.assert_close(a.logits, b.logits, **TOL)
        torch.testing.assert_close(a.loss, b.loss, **TOL)
        for r in range(3):
            one = forward_train(bb, _batch(bb, 3, rows=[r]))
            torch.testing.assert_close(a.logits[r, : one.logits.shape[1]], one.logits[0], **TOL)
        bb.model.set_attn_implementation("eager")  # eager attention adds a float mask
        try:
            torch.testing.assert_close(forward_train(bb, batch).logits, a.logits, **TOL)
        finally:
            bb.model.set_attn_implementation("sdpa")
        bb.bottleneck = False
        plain = forward_train(bb, batch)
        bb.bottleneck = True
    torch.testing.assert_close(plain.latents, a.latents, **TOL)  # the chain itself is unchanged
    assert (plain.logits - a.logits).abs().max() > 1e-3  # the answer is not


def test_bottleneck_generate_equals_naive_greedy(bottleneck):
    bb = bottleneck
    batch = _batch(bb, 3, target=False)
    eos, bb.eos_ids = bb.eos_ids, set()
    try:
        gen = generate(bb, batch, max_new_tokens=5)
        assert gen.token_ids == _naive_greedy(bb, batch, 5)
        one = generate(bb, _batch(bb, 3, target=False, rows=[1]), max_new_tokens=5)
        assert one.token_ids[0] == gen.token_ids[1]
    finally:
        bb.eos_ids = eos


# --- the frozen tower's feature cache ------------------------------------------------------


def _keyed(bb, seeds, mixed=False):
    """Clips with keys; ``mixed``: of two shapes (different token counts)."""
    out = []
    for s in seeds:
        odd = s % 2 or not mixed
        frames, ts = random_clip(4 if odd else 2, 56, 56 if odd else 84, seed=s)
        out.append(replace(bb.preprocess_video(frames, ts), key=f"clip{s}"))
    return out


def _batch_of(bb, videos):
    return bb.collate([bb.encode(Prompt([v], "Where is the ball?", k=1, target="A")) for v in videos])


def _same_context(a, b, exact=True):
    same = torch.equal if exact else lambda x, y: torch.allclose(x, y, atol=1e-6, rtol=0)
    assert same(a.inputs_embeds, b.inputs_embeds)
    assert a.extras.keys() == b.extras.keys()
    for k in a.extras:  # Qwen3-VL: DeepStack levels, row-aligned with the features
        assert all(same(x, y) for x, y in zip(a.extras[k], b.extras[k], strict=True))


@pytest.mark.parametrize("mixed", [False, True])
def test_tower_cache_gives_the_towers_output_and_skips_seen_clips(bb, monkeypatch, mixed):
    clips = _keyed(bb, range(5), mixed)
    first, second = _batch_of(bb, clips[:3]), _batch_of(bb, [clips[4], clips[0], clips[2]])
    with torch.no_grad():
        want = [bb.prepare(first), bb.prepare(second)]
        bb.tower_cache = TowerCache(1 << 30)
        calls = []
        tower = bb._vision_forward
        monkeypatch.setattr(bb, "_vision_forward", lambda vs: calls.append([v.key for v in vs]) or tower(vs))
        try:
            got = [bb.prepare(first), bb.prepare(second), bb.prepare(second)]
        finally:
            bb.tower_cache = None
    for g, w in zip(got, [*want, want[1]], strict=True):
        # bit for bit when the clips share a shape (the tower computes each on its own);
        # mixed shapes pad the tower's attention, which moves the last bits (~3e-8)
        _same_context(g, w, exact=not mixed)
    # the tower ran on unseen clips only: all of the first batch, then clip 4 alone, then none
    assert calls == [["clip0", "clip1", "clip2"], ["clip4"]]


def test_tower_cache_keeps_no_keyless_clip_and_respects_its_bound(bb, monkeypatch):
    keyless = [replace(v, key=None) for v in _keyed(bb, [1, 2])]  # one shape: exact
    batch = _batch_of(bb, keyless)
    with torch.no_grad():
        want = bb.prepare(batch)
        for cache in (TowerCache(1 << 30), TowerCache(0)):
            bb.tower_cache = cache
            try:
                _same_context(bb.prepare(batch), want)
                keyed = _batch_of(bb, _keyed(bb, [1, 2]))
                _same_context(bb.prepare(keyed), want)
            finally:
                bb.tower_cache = None
            assert cache.bytes <= cache.max_bytes
            assert sorted(cache.rows) == ([] if cache.max_bytes == 0 else ["clip1", "clip2"])
