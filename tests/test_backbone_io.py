"""Checkpoint round trips, latent-token addition, tokenizer, and misuse that must raise."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from stormvl.backbones import (
    LATENT_TOKENS,
    Prompt,
    add_latent_tokens,
    load_backbone,
    read_stormvl_meta,
)
from stormvl.backbones.tiny import QWEN_SPECIAL_TOKENS, build_tiny, build_tokenizer, random_clip
from stormvl.errors import UserError
from stormvl.latent import forward_train, generate

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]


def _batch(bb, k=2, target="B"):
    frames, ts = random_clip(4, 56, 56)
    v = bb.preprocess_video(frames, ts)
    ps = [Prompt([v], "Which one?", k=k, target=target), Prompt([], "Text only, longer prompt", k=k, target=target)]
    return bb.collate([bb.encode(p) for p in ps])


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_identical_logits(tmp_path, family):
    bb = build_tiny(family, "tiny", seed=1)
    out = bb.save(tmp_path / "ckpt", {"method": "storm", "k": 2})
    assert not (tmp_path / "ckpt.tmp").exists()
    meta = read_stormvl_meta(out)
    assert meta["backbone"] == family and meta["method"] == "storm" and meta["k"] == 2
    assert meta["video"] == bb.video.to_dict()
    bb2 = load_backbone(out)
    assert type(bb2) is type(bb) and bb2.video == bb.video
    assert (bb2.latent_start_id, bb2.latent_id, bb2.latent_end_id) == (
        bb.latent_start_id, bb.latent_id, bb.latent_end_id)
    batch = _batch(bb)
    with torch.no_grad():
        a, b = forward_train(bb, batch), forward_train(bb2, _batch(bb2))
    assert torch.equal(a.logits, b.logits)
    # plain transformers reloads it too, and saving again over it is atomic
    plain = bb.model_class().from_pretrained(out)
    assert torch.equal(plain.lm_head.weight, bb.model.lm_head.weight)
    bb.save(out, {"method": "latent"})
    assert read_stormvl_meta(out)["method"] == "latent"
    assert not (tmp_path / "ckpt.old").exists()


def test_checkpoint_of_another_backbone_raises(tmp_path):
    out = build_tiny("qwen2_5_vl", "tiny").save(tmp_path / "c", {})
    with pytest.raises(UserError, match="qwen2_5_vl checkpoint"):
        load_backbone(out, family="qwen3_vl")
    meta = json.loads((out / "stormvl.json").read_text())
    meta["backbone"] = "qwen3_vl"
    (out / "stormvl.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="stormvl.json names backbone"):
        load_backbone(out)
    with pytest.raises(UserError, match="cannot load a model config"):
        load_backbone(tmp_path / "missing")


def test_latent_tokens_added_with_resize_and_copied_rows():
    bb = build_tiny("qwen2_5_vl", "tiny")
    tok = bb.tokenizer
    n_base = len(build_tokenizer())
    assert bb.model.get_input_embeddings().num_embeddings == n_base + 3
    assert bb.model.lm_head.weight.shape[0] == n_base + 3
    assert bb.model.config.text_config.vocab_size == n_base + 3
    emb = bb.model.get_input_embeddings().weight
    ids = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_pad|>", "<|vision_end|>"])
    for new, src in zip((bb.latent_start_id, bb.latent_id, bb.latent_end_id), ids, strict=True):
        assert torch.equal(emb[new], emb[src])
        assert torch.equal(bb.model.lm_head.weight[new], bb.model.lm_head.weight[src])
    assert add_latent_tokens(bb.model, tok) == [bb.latent_start_id, bb.latent_id, bb.latent_end_id]
    assert len(tok) == n_base + 3  # idempotent


def test_latent_tokens_in_padded_vocabulary_do_not_resize():
    """Real checkpoints have spare embedding rows: ids land there, rows are still initialised."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    bb = build_tiny("qwen2_5_vl", "tiny")
    cfg = bb.model.config
    cfg.text_config.vocab_size = len(build_tokenizer()) + 64
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    tok = build_tokenizer()
    ids = add_latent_tokens(model, tok)
    assert model.get_input_embeddings().num_embeddings == len(build_tokenizer()) + 64
    src = tok.convert_tokens_to_ids("<|vision_end|>")
    assert torch.equal(model.get_input_embeddings().weight[ids[2]], model.get_input_embeddings().weight[src])


def test_tokenizer_is_deterministic_and_round_trips():
    from stormvl.backbones.tiny import _tokenizer_json

    assert _tokenizer_json.__wrapped__() == _tokenizer_json()  # retraining gives the same BPE
    a = build_tokenizer()
    assert [a.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS] == list(range(8))
    text = "Which cup hides the ball after 3 swaps? Ünïcode ok."
    ids = a(text, add_special_tokens=False)["input_ids"]
    assert a.decode(ids) == text and len(ids) < len(text)
    bb = build_tiny("qwen2_5_vl", "tiny")
    # user text never becomes a special token
    enc = bb.encode(Prompt([], "say <|im_end|> and <|latent|>"))
    assert enc.input_ids.count(bb.im_end_id) == 2 and bb.latent_id not in enc.input_ids
    assert set(LATENT_TOKENS) <= set(bb.tokenizer.get_vocab())


def test_labels_cover_only_target_and_im_end():
    bb = build_tiny("qwen3_vl", "tiny")
    enc = bb.encode(Prompt([], "q", k=3, target="A because"))
    sup = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100]
    assert bb.tokenizer.decode(sup) == "A because<|im_end|>"
    assert enc.input_ids[enc.split - 1] == bb.latent_start_id
    assert enc.input_ids[enc.split : enc.split + 4] == [bb.latent_id] * 3 + [bb.latent_end_id]


@pytest.mark.parametrize("family", FAMILIES)
def test_misuse_raises(family):
    bb = build_tiny(family, "tiny")
    batch = _batch(bb)
    with pytest.raises(ValueError, match="hard cap"):
        bb.encode(Prompt([], "q", k=bb.max_latents + 1))
    with pytest.raises(ValueError, match="hard cap"):
        forward_train(bb, dataclasses.replace(batch, k=bb.max_latents + 1))
    with pytest.raises(ValueError, match="share K"):
        bb.collate([bb.encode(Prompt([], "q", k=1)), bb.encode(Prompt([], "q", k=2))])
    with pytest.raises(ValueError, match="mixes"):
        bb.collate([bb.encode(Prompt([], "q", target="A")), bb.encode(Prompt([], "q"))])
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        forward_train(bb, dataclasses.replace(batch, mm_token_type_ids=torch.zeros_like(batch.mm_token_type_ids)))
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        forward_train(bb, dataclasses.replace(batch, mm_token_type_ids=None))
    with pytest.raises(ValueError, match="position_ids"):
        forward_train(bb, dataclasses.replace(batch, position_ids=None))
    with pytest.raises(ValueError, match="position_ids"):
        forward_train(bb, dataclasses.replace(batch, position_ids=batch.position_ids[0]))
    with pytest.raises(ValueError, match="features"):
        forward_train(bb, dataclasses.replace(batch, videos=[]))
    with pytest.raises(ValueError, match="latent_start"):
        forward_train(bb, dataclasses.replace(batch, latent_col=batch.latent_col + 1))
    with pytest.raises(ValueError, match="without a target"):
        generate(bb, batch)
    with pytest.raises(ValueError, match="with a target"):
        forward_train(bb, _batch(bb, target=None))
    ctx = bb.prepare(batch)
    cache = bb.new_cache()
    bb.run(ctx, cache, 0, ctx.inputs_embeds[:, :5])
    with pytest.raises(ValueError, match="stale cache"):
        bb.run(ctx, cache, 4, ctx.inputs_embeds[:, 4:6])


def test_7b_shape_matches_released_qwen2_5_vl_7b():
    """The GPU speed preset: built on the meta device, nothing allocated."""
    bb = build_tiny("qwen2_5_vl", "7b", device="meta", dtype=torch.bfloat16)
    n = sum(p.numel() for p in bb.model.parameters())
    assert abs(n / 1e9 - 8.29) < 0.01  # Qwen2.5-VL-7B-Instruct has 8.29B parameters
    assert bb.model.config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert bb.model.get_input_embeddings().num_embeddings == 152064  # padded, no resize
