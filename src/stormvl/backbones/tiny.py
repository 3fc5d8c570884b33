"""Tiny and small Qwen2.5-VL / Qwen3-VL architectures with a locally built tokenizer.

Everything here is offline: the configs are written out below (random init, fp32) and the
tokenizer is a byte-level BPE trained in milliseconds on a small built-in corpus, with the
Qwen special and chat-template tokens at the front. Tests use ``size="tiny"``; the demo and
the speed scripts use ``size="small"`` (the shape of the project's first pilot).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from stormvl.backbones.base import Backbone, VideoSettings

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Words of the built-in suite's questions and of common benchmark prompts, so that the
# tokenizer learns merges for them; anything else still encodes (byte-level fallback).
_CORPUS_WORDS = """
the a an of to in on at is are was were be which what where when how many much does did do
after before during first last second third next then finally end start video frame frames
ball cup cups shell swap swaps swapped under hidden behind occluder wall left right up down
top bottom middle center centre red green blue yellow purple orange white black gray grey pink
cyan brown object objects circle square triangle star moves moved moving move faster slower
fast slow speed direction clockwise counterclockwise rotate rotation rotates turn turns order
event events happen happened count counted times number collide collision hit hits will would
exit exits enter enters container box inside outside contain contains remove removed removal
state change changes changed map room grid path trail same different larger smaller than
question answer options option choose best letter directly given choices reason reasoning
think step because so therefore imagine imagined track tracked position positions final
yes no true false none all both either neither one two three four five six seven eight nine ten
0 1 2 3 4 5 6 7 8 9 10 A B C D E A. B. C. D. E. (A) (B) (C) (D) (E) seconds second
You are a helpful assistant. Answer with the option's letter from the given choices directly.
"""


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=640,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = _CORPUS_WORDS.split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    tok.train_from_iterator(lines * 4 + [_CORPUS_WORDS], trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    return tok.to_str()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer with the Qwen special tokens (ids 0-7)."""
    tok = Tokenizer.from_str(_tokenizer_json())
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )


def derive_mrope_section(head_dim: int, interleaved: bool) -> list[int]:
    """Split head_dim / 2 rotary pairs into (temporal, height, width) sections.

    Qwen2.5-VL's 7B split is [16, 24, 24] of 64 (1/4, 3/8, 3/8, contiguous); Qwen3-VL's is
    [24, 20, 20] of 64 with height/width interleaved every third pair, which needs
    3 * section <= head_dim / 2. Nothing in transformers checks the sum at config time.
    """
    half = head_dim // 2
    if head_dim % 2 or half < 4:
        raise ValueError(f"head_dim {head_dim} is too small for 3-D rotary positions")
    hw = (half * 5) // 16 if interleaved else (half * 3) // 8
    section = [half - 2 * hw, hw, hw]
    assert sum(section) == half and min(section) > 0
    assert not interleaved or 3 * hw <= half
    return section


_SIZES = {
    # text hidden, layers, heads, kv heads, mlp; vision hidden, depth, heads, mlp
    "tiny": dict(hidden=64, layers=2, heads=4, kv=2, mlp=128, v_hidden=32, v_depth=1, v_heads=2, v_mlp=64),
    "small": dict(hidden=128, layers=2, heads=4, kv=2, mlp=256, v_hidden=64, v_depth=2, v_heads=4, v_mlp=128),
    # the shape of Qwen2.5-VL-7B (random init; GPU speed runs only), vocabulary padded as released
    "7b": dict(hidden=3584, layers=28, heads=28, kv=4, mlp=18944, v_hidden=1280, v_depth=32,
               v_heads=16, v_mlp=3420, vocab=152064),
}


def _qwen2_5_vl_config(s: dict, vocab: int, ids: dict):
    from transformers import Qwen2_5_VLConfig

    head_dim = s["hidden"] // s["heads"]
    text = dict(
        vocab_size=vocab, hidden_size=s["hidden"], intermediate_size=s["mlp"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"], max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                         "mrope_section": derive_mrope_section(head_dim, interleaved=False)},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=s["v_depth"], hidden_size=s["v_hidden"], intermediate_size=s["v_mlp"],
        num_heads=s["v_heads"], out_hidden_size=s["hidden"], patch_size=14,
        temporal_patch_size=2, spatial_merge_size=2, tokens_per_second=2, window_size=112,
        fullatt_block_indexes=[i for i in range(s["v_depth"]) if i % 8 == 7] or [s["v_depth"] - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )


def _qwen3_vl_config(s: dict, vocab: int, ids: dict):
    from transformers import Qwen3VLConfig

    head_dim = s["hidden"] // s["heads"]
    text = dict(
        vocab_size=vocab, hidden_size=s["hidden"], intermediate_size=s["mlp"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"], head_dim=head_dim, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_interleaved": True,
                         "mrope_section": derive_mrope_section(head_dim, interleaved=True)},
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=s["v_depth"], hidden_size=s["v_hidden"], intermediate_size=s["v_mlp"],
        num_heads=s["v_heads"], out_hidden_size=s["hidden"], patch_size=16,
        temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64,
        deepstack_visual_indexes=list(range(min(s["v_depth"], s["layers"]))),
    )
    return Qwen3VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )


def build_tiny(
    family: str = "qwen2_5_vl",
    size: str = "tiny",
    seed: int = 0,
    video: VideoSettings | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Backbone:
    """A randomly initialised backbone of the given family and size, fully offline.

    The latent tokens are added through the same path a real checkpoint takes (new rows
    copied from existing tokens, embeddings and LM head resized). ``size="7b"`` is the
    Qwen2.5-VL-7B shape, for GPU speed runs (built directly on ``device`` in ``dtype``).
    """
    from stormvl.backbones import ADAPTERS, add_latent_tokens

    if family not in ADAPTERS:
        raise ValueError(f"unknown backbone family {family!r}; choose from {sorted(ADAPTERS)}")
    if size not in _SIZES:
        raise ValueError(f"unknown tiny size {size!r}; choose from {sorted(_SIZES)}")
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    make = _qwen2_5_vl_config if family == "qwen2_5_vl" else _qwen3_vl_config
    shape = _SIZES[size]
    config = make(shape, shape.get("vocab", len(tokenizer)), ids)
    cls = ADAPTERS[family]
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls.model_class()._from_config(config, dtype=dtype).eval()
    add_latent_tokens(model, tokenizer)
    return cls(model, tokenizer, video=video or cls.tiny_video_settings())


def random_clip(num_frames: int = 4, height: int = 56, width: int = 56, fps: float = 2.0,
                seed: int = 0):
    """Random uint8 frames (T, H, W, 3) and their timestamps, for tests and speed scripts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(num_frames, height, width, 3), dtype=np.uint8)
    return frames, np.arange(num_frames, dtype=np.float64) / fps
