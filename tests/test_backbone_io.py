"""Checkpoint round trips, latent-token addition, tokenizer, misuse that must raise, and
checkpoints that transformers' Auto classes load as they are."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


# --- checkpoints other tools load: transformers' Auto classes on a saved folder -------------

TRAINED_VIDEO = {"num_frames": 8, "fps": None, "max_frames": 64}  # a run's video_config
SRC_FPS, SRC_INDICES = 6.0, [0, 3, 6, 9, 12, 15, 18, 21]  # frames sampled from a 24-frame file

_AUTO_PROCESSOR_SCRIPT = r"""
import json, sys
import torch
from transformers import AutoProcessor
from transformers.video_utils import VideoMetadata

out = {}
for fam, j in json.load(sys.stdin).items():
    p = AutoProcessor.from_pretrained(j["path"])  # no trust_remote_code
    vp, ip = p.video_processor, p.image_processor
    text = p.apply_chat_template(j["messages"], add_generation_prompt=True, tokenize=False)
    meta = VideoMetadata(total_num_frames=24, fps=j["fps"], frames_indices=j["indices"])
    videos = {"video_grid_thw": torch.tensor([j["grid"]]), "video_metadata": [meta]}
    expanded, _ = p.get_text_with_replacements([text], videos_replacements=[p.replace_video_token(videos, 0)])
    out[fam] = {
        "classes": [type(p).__name__, type(vp).__name__, type(ip).__name__],
        "video": [vp.size.shortest_edge, vp.size.longest_edge, vp.num_frames, vp.fps,
                  vp.do_sample_frames, vp.patch_size, vp.merge_size, vp.temporal_patch_size],
        "video_mean": [list(vp.image_mean), list(type(vp).image_mean)],
        "image": [ip.size.shortest_edge, ip.size.longest_edge, ip.patch_size, ip.merge_size,
                  list(ip.image_mean), list(ip.image_std), list(vp.image_std)],
        "ids": p.tokenizer(expanded[0])["input_ids"],
        "n_tokens": p._get_num_multimodal_tokens(video_sizes=j["shapes"]).num_video_tokens,
    }
print(json.dumps(out))
"""

SHAPES = [[8, 56, 56], [5, 64, 96], [16, 240, 320]]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Both families saved as a run saves them: family -> (backbone, folder)."""
    root, out = tmp_path_factory.mktemp("saved"), {}
    for family in FAMILIES:
        bb = build_tiny(family, "tiny", seed=1)
        out[family] = bb, bb.save(root / family, {"video_config": TRAINED_VIDEO})
    return out


def _clip(bb):
    frames, _ = random_clip(len(SRC_INDICES), 56, 56, seed=3)
    return bb.preprocess_video(frames, np.asarray(SRC_INDICES, dtype=np.float64) / SRC_FPS)


def test_auto_processor_reads_the_checkpoint_as_training_ran(saved, tmp_path):
    """transformers' AutoProcessor (its real classes; a stand-in torchvision lets them
    construct here) loads each family's folder with the trained pixel bounds and frames, and
    its chat template plus its own video-token expansion give exactly stormvl's prompt ids."""
    (tmp_path / "torchvision").mkdir()
    shutil.copy(Path(__file__).with_name("stub_torchvision.py"), tmp_path / "torchvision" / "__init__.py")
    dist = tmp_path / "torchvision-0.28.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    job, want = {}, {}
    for fam, (bb, path) in saved.items():
        v = _clip(bb)
        msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which one?"}]}]
        job[fam] = {"path": str(path), "messages": msgs, "grid": v.grid_thw.tolist(),
                    "fps": SRC_FPS, "indices": SRC_INDICES, "shapes": SHAPES}
        want[fam] = bb.encode(Prompt([v], "Which one?")).input_ids
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", _AUTO_PROCESSOR_SCRIPT], input=json.dumps(job),
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    classes = {"qwen2_5_vl": ["Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", "Qwen2VLImageProcessor"],
               "qwen3_vl": ["Qwen3VLProcessor", "Qwen3VLVideoProcessor", "Qwen2VLImageProcessor"]}
    for fam, (bb, _) in saved.items():
        g, vc = got[fam], bb.model.config.vision_config
        lo, hi = (bb.tiny_video_settings().min_pixels, bb.tiny_video_settings().max_pixels)
        assert g["classes"] == classes[fam]
        assert g["video"] == [lo, hi, 8, None, True, vc.patch_size, vc.spatial_merge_size,
                              vc.temporal_patch_size]
        mean, family_mean = g["video_mean"]
        assert mean == pytest.approx(family_mean)  # the family's normalisation, per transformers
        assert g["image"] == [lo, hi, vc.patch_size, vc.spatial_merge_size, mean, g["image"][-1],
                              g["image"][-1]]
        assert g["ids"] == want[fam]  # template + HF's placeholder expansion == stormvl's layout
        assert g["n_tokens"] == [bb.video_token_count(*s) for s in SHAPES]  # bounds' meaning


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_model_and_tokenizer_reload_the_checkpoint(saved, family):
    """AutoModelForImageTextToText gives the backbone's logits; AutoTokenizer's chat template
    gives its text-only and system-prompt layouts."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    bb, path = saved[family]
    tok = AutoTokenizer.from_pretrained(path)
    for system in (None, "Be brief."):
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "Which one?"}]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert tok(text)["input_ids"] == bb.encode(Prompt([], "Which one?", system=system)).input_ids
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert type(model) is bb.model_class()
    batch = _batch(bb, k=0)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  pixel_values_videos=torch.cat([v.pixel_values for v in batch.videos]),
                  video_grid_thw=torch.stack([v.grid_thw for v in batch.videos]),
                  mm_token_type_ids=batch.mm_token_type_ids, position_ids=batch.position_ids)
    with torch.no_grad():
        ours = forward_train(bb, batch).logits
        theirs = model(**kwargs).logits[:, batch.target_col - 1 : -1]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_saved_video_settings_follow_the_run(tmp_path):
    """fps sampling is written as fps + max_frames; without a run's settings, none are."""
    bb = build_tiny("qwen2_5_vl", "tiny")
    _, video = bb.processor_configs({"num_frames": None, "fps": 2.0, "max_frames": 32})
    assert (video["fps"], video["num_frames"], video["max_frames"], video["do_sample_frames"]) == (
        2.0, None, 32, True)
    _, plain = bb.processor_configs(None)
    assert not {"fps", "num_frames", "do_sample_frames"} & set(plain)
