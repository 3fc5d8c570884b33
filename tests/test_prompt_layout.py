"""``data.prompt=bare``: the video alone in the user turn, trained and evaluated alike, and
refused wherever the one-question premise does not hold."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from stormvl.cli import main
from stormvl.data.manifest import read_manifest, write_manifest
from stormvl.errors import UserError
from stormvl.training.checkpoint import read_meta
from stormvl.training.loop import train
from train_fixtures import make_suite, tiny_config

# what the tiny Qwen2.5-VL chat layout must be with the question left out: no system turn,
# no text in the user turn, the video's placeholder span elided (written out by hand)
BARE = "<|im_start|>user\n<|vision_start|><|vision_end|><|im_end|>\n<|im_start|>assistant\n"


def _bare(cfg):
    return replace(cfg, data=replace(cfg.data, prompt="bare"))


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return make_suite(tmp_path_factory.mktemp("suite"), n=4)


@pytest.fixture(scope="module")
def bare_ckpt(tmp_path_factory, suite) -> Path:
    out = tmp_path_factory.mktemp("bare") / "run"
    return train(_bare(tiny_config(out, suite, "direct", max_steps=1)))


def _text_of(bb, ids) -> str:
    return bb.tokenizer.decode([t for t in ids if t != bb.video_token_id], skip_special_tokens=False)


def test_bare_training_prompt_is_the_video_alone(bare_ckpt, suite):
    from stormvl.training.loop import make_prepare

    meta = read_meta(bare_ckpt)
    assert meta["prompt"] == {"layout": "bare", "question": "Which colour is the square?",
                              "options": ["red", "blue", "green"]}
    from stormvl.backbones import load_backbone
    from stormvl.training.data import Loaded

    bb = load_backbone(str(bare_ckpt))
    cfg = _bare(tiny_config(bare_ckpt.parent, suite, "direct"))
    import numpy as np

    sample = read_manifest(suite)[0]
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    media = [bb.preprocess_video(frames, np.arange(4) / 4.0)]
    enc = make_prepare(bb, cfg)(Loaded(sample=sample, frames=None, timestamps=None, plan=None,
                                       media=media))
    assert _text_of(bb, enc.input_ids) == BARE + sample.answer + "<|im_end|>"


def test_bare_refuses_a_second_question(tmp_path, suite):
    rows = read_manifest(suite)
    rows[1] = replace(rows[1], question="Which colour is the circle?")
    other = tmp_path / "two.jsonl"
    write_manifest(other, rows)
    for p in suite.parent.glob("*.mp4"):
        (tmp_path / p.name).symlink_to(p)
    with pytest.raises(UserError, match=r"two\.jsonl: data.prompt=bare needs every row to ask "
                                        r"the same question .* 2 different"):
        train(_bare(tiny_config(tmp_path / "run", other, "direct", max_steps=1)))


def test_resume_with_another_layout_refused(tmp_path, suite):
    cfg = _bare(tiny_config(tmp_path / "run", suite, "direct", max_steps=1))
    train(cfg)
    chat = replace(cfg, data=replace(cfg.data, prompt="chat"), optim=replace(cfg.optim, max_steps=2))
    with pytest.raises(UserError, match="data.prompt='bare', this config has 'chat'"):
        train(chat, resume=True)


def test_evaluation_uses_the_bare_layout_and_refuses_other_questions(bare_ckpt, suite, capsys):
    from stormvl.evaluation import EvalSettings, Runner, load_model
    from stormvl.tasks.base import EvalItem

    runner = Runner(load_model(bare_ckpt, "cpu"), EvalSettings(max_new_tokens=2))
    video = suite.parent / "v0.mp4"
    same = EvalItem("q0", "synth", video, "Which colour is the square?\nA. red\nB. blue\nC. green",
                    "A", question="Which colour is the square?", options=["red", "blue", "green"])
    p = runner.prepare(same)
    assert _text_of(runner.model.backbone, p.encoded.input_ids) == BARE
    other = replace(same, question="Which colour is the circle?")
    with pytest.raises(UserError, match="trained with data.prompt=bare on one question"):
        runner.prepare(other)
    # the CLI: one error line, exit 2
    code = main(["answer", "--model", str(bare_ckpt), "--video", str(video), "--question",
                 "What is it?", "--option", "red", "--option", "blue", "--device", "cpu"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "data.prompt=bare" in errors[0]
    assert json.loads((bare_ckpt / "stormvl.json").read_text())["prompt"]["layout"] == "bare"
