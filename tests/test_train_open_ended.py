"""Open-ended video QA end to end: LLaMA-Factory-shaped records without options train every
method on the tiny backbone, with the answer text as the supervised target, and a trained
checkpoint answers in words through ``stormvl answer`` without ``--option``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from stormvl.cli import main
from stormvl.training.config import DataConfig
from stormvl.training.data import load_samples
from stormvl.training.loop import train
from train_fixtures import make_suite, metric, tiny_config

# what each colour's square is called, in words (the suite's videos: red, blue, green)
ANSWERS = ["It is red.", "It is blue.", "It is green."]
QUESTION = "What colour is the square?"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The suite's videos as a LLaMA-Factory dataset shaped like its mllm_video_demo
    (``messages`` with ``<video>``, a ``videos`` list, the reply in words), plus the
    ``<think>`` rationale textcot needs and the thought video storm / oracle need."""
    root = tmp_path_factory.mktemp("open")
    make_suite(root)
    records = []
    for i in range(8):
        a = i % 3
        records.append({
            "messages": [{"content": f"<video>{QUESTION}", "role": "user"},
                         {"content": f"<think>The square is {['red', 'blue', 'green'][a]}.</think>"
                                     f"{ANSWERS[a]}", "role": "assistant"}],
            "videos": [f"v{i}.mp4"], "thought_video": f"t{i}.mp4"})
    (root / "open_demo.json").write_text(json.dumps(records, indent=2))
    (root / "dataset_info.json").write_text(json.dumps({"open_demo": {
        "file_name": "open_demo.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "videos": "videos"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant"}}}))
    return root


def _config(out: Path, demo: Path, method: str, **kw):
    cfg = tiny_config(out, demo / "open_demo.json", method, **kw)
    data = DataConfig(train="open_demo", format="llamafactory",
                      dataset_info=str(demo / "dataset_info.json"), split=None)
    return replace(cfg, data=data, align=replace(cfg.align, center=False))


@pytest.mark.parametrize("method", ["direct", "textcot", "latent", "storm", "oracle"])
def test_targets_are_the_answer_text(demo, method):
    """The supervised tokens decode to the answer in words (textcot: the rationale first)
    followed by the end token, with the question alone as the user text."""
    from stormvl.training.build import build_model
    from stormvl.training.data import VideoQADataset
    from stormvl.training.loop import make_prepare
    from stormvl.training.video_settings import backbone_counter

    cfg = _config(demo / "unused", demo, method)
    bb = build_model(cfg).backbone
    samples, root, _ = load_samples(cfg.data)
    data = VideoQADataset(samples, root, cfg.video, backbone_counter(bb), bb.temporal_patch,
                          make_prepare(bb, cfg), oracle_frames=2 * (method == "oracle"))
    for i in range(3):
        enc = data[i].features
        supervised = [t for t in enc.labels if t != -100]
        colour = ["red", "blue", "green"][i]
        want = (f"The square is {colour}.\nThe answer is {ANSWERS[i]}" if method == "textcot"
                else ANSWERS[i])
        assert bb.tokenizer.decode(supervised) == want + "<|im_end|>"
        text = bb.tokenizer.decode(enc.input_ids)
        assert f"{QUESTION}<|im_end|>" in text and "letter" not in text


@pytest.mark.parametrize("method", ["direct", "textcot", "latent", "storm", "oracle"])
def test_every_method_trains_on_open_ended_rows(tmp_path, demo, method):
    # batch 8 = every record: each step sees the same batch, so the loss must fall
    final = train(_config(tmp_path / "run", demo, method, batch_size=8, max_steps=5, every=5,
                          lr=2e-3))
    losses = metric(tmp_path / "run")
    assert len(losses) == 5 and losses[-1] < 0.85 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert json.loads((final / "stormvl.json").read_text())["method"] == method


# the first reply of LLaMA-Factory's mllm_video_demo.json: 25 tokens of the tiny tokenizer,
# more than the 16 a multiple-choice reply gets
LONG = "Because a baby is reading, and he is so cute!"


def test_a_trained_checkpoint_answers_in_words_without_options(tmp_path, capsys):
    root = tmp_path / "data"
    make_suite(root, thought=False)
    records = [{"messages": [{"content": "<video>Why is this video funny?", "role": "user"},
                             {"content": LONG, "role": "assistant"}],
                "videos": [f"v{i}.mp4"]} for i in range(8)]
    (root / "mllm_video_demo.json").write_text(json.dumps(records, indent=2))
    cfg = tiny_config(tmp_path / "run", root / "mllm_video_demo.json", "direct", batch_size=2,
                      max_steps=30, every=30, lr=5e-3)
    final = train(replace(cfg, data=DataConfig(train=str(root / "mllm_video_demo.json"),
                                               format="llamafactory", split=None)))
    capsys.readouterr()  # the trainer's summary line
    code = main(["answer", "--model", str(final), "--video", str(root / "v1.mp4"),
                 "--question", "Why is this video funny?", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr()
    assert out.out.strip() == LONG
    # decoding went past 16 tokens and stopped at the end token: the answer's tokens + 1
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(str(final))(LONG, add_special_tokens=False)["input_ids"])
    assert n > 16 and f"({n + 1} tokens, K = 0)" in out.err
