"""The training loop end to end on the tiny backbone: every method, stage 2 rules, resume,
the NaN guard, bad media, LoRA export, and the CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from stormvl.cli import main
from stormvl.errors import UserError
from stormvl.training.checkpoint import list_checkpoints, read_meta, read_trainer_state
from stormvl.training.loop import TrainingDiverged, train
from train_fixtures import make_suite, tiny_config


def _losses(out: Path, key: str = "loss") -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return make_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, suite) -> Path:
    """A storm stage-1 run reused by the stage-2 tests."""
    out = tmp_path_factory.mktemp("stage1") / "run"
    return train(tiny_config(out, suite, "storm", max_steps=3, batch_size=8))


@pytest.mark.parametrize("method", ["direct", "textcot", "latent", "storm", "oracle"])
def test_each_method_loss_falls_on_a_fixed_batch(tmp_path, suite, method):
    # batch 8 = the whole suite: every step sees the same fixed batch
    final = train(tiny_config(tmp_path / "run", suite, method, batch_size=8, max_steps=5))
    losses = _losses(tmp_path / "run")
    assert len(losses) == 5 and losses[-1] < 0.8 * losses[0], losses
    meta = read_meta(final)
    assert meta["method"] == method and meta["backbone"] == "qwen2_5_vl"
    assert meta["k"] == (2 if method in ("latent", "storm") else 0)
    assert meta["video_config"]["num_frames"] == 4
    if method == "storm":
        aligned = _losses(tmp_path / "run", "cos")
        assert aligned[-1] > aligned[0]  # the latents move towards their targets


def test_storm_stage2_from_stage1_and_refusals(tmp_path, suite, stage1):
    cfg = tiny_config(tmp_path / "s2", suite, "storm", stage=2, stage1_checkpoint=str(stage1), max_steps=2)
    final = train(cfg)
    meta = read_meta(final)
    assert (meta["stage"], meta["k"]) == (2, 2)
    assert "align" not in json.loads((tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()[0])
    with pytest.raises(UserError, match="K=2, this run has method.k=3"):
        train(replace(cfg, out_dir=str(tmp_path / "k3"), method=replace(cfg.method, k=3)))
    with pytest.raises(UserError, match="backbone 'qwen2_5_vl', this run uses 'qwen3_vl'"):
        train(replace(cfg, out_dir=str(tmp_path / "q3"), model=replace(cfg.model, backbone="tiny:qwen3_vl")))
    with pytest.raises(UserError, match="checkpoint folder not found"):
        train(replace(cfg, out_dir=str(tmp_path / "gone"),
                      method=replace(cfg.method, stage1_checkpoint=str(tmp_path / "nope"))))
    direct = train(tiny_config(tmp_path / "d", suite, "direct", max_steps=1))
    with pytest.raises(UserError, match="not storm stage 1"):
        train(replace(cfg, out_dir=str(tmp_path / "fromdirect"),
                      method=replace(cfg.method, stage1_checkpoint=str(direct))))


def test_kill_and_resume_reproduces_the_loss_curve(tmp_path, suite):
    kw = dict(max_steps=6, batch_size=2, grad_accum=2, every=2)
    train(tiny_config(tmp_path / "full", suite, "storm", **kw))
    full = _losses(tmp_path / "full")

    def kill(run, metrics):
        if run.state.step == 5:  # after the step-4 checkpoint, mid-way to the next one
            raise KeyboardInterrupt

    cfg = tiny_config(tmp_path / "cut", suite, "storm", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_step=kill)
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [2, 4]
    state = read_trainer_state(tmp_path / "cut" / "checkpoints" / "step-000004")
    assert state["trainer"]["micro_batches"] == 8  # data position: 4 steps x 2 micro-batches
    with pytest.raises(UserError, match="already holds checkpoints"):
        train(cfg)
    train(cfg, resume=True)
    resumed = _losses(tmp_path / "cut")
    assert len(resumed) == 6  # rows of the killed step 5 were replaced, not duplicated
    assert resumed == full, (resumed, full)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, suite):
    def poison(run, metrics):
        if run.state.step == 2:
            with torch.no_grad():
                next(p for p in run.built.backbone.language_model.parameters()).fill_(float("nan"))

    cfg = tiny_config(tmp_path / "run", suite, "latent", max_steps=6, every=2)
    with pytest.raises(TrainingDiverged, match=r"non-finite at step 3.*step-000002"):
        train(cfg, on_step=poison)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert len(_losses(tmp_path / "run")) == 2


def test_bad_media_is_counted_and_stops_above_the_fraction(tmp_path, suite):
    (tmp_path / "m.jsonl").write_text(
        suite.read_text().replace('"video": "v3.mp4"', '"video": "missing.mp4"'))
    for p in suite.parent.glob("*.mp4"):
        shutil.copy(p, tmp_path / p.name)
    cfg = tiny_config(tmp_path / "ok", tmp_path / "m.jsonl", "direct", max_steps=3)
    train(replace(cfg, data=replace(cfg.data, max_bad_fraction=0.5)))
    rows = [json.loads(line) for line in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bad_media"] >= 1 and sum(r["samples"] for r in rows) == 12 - rows[-1]["bad_media"]
    strict = replace(cfg, out_dir=str(tmp_path / "strict"), data=replace(cfg.data, max_bad_fraction=0.0),
                     optim=replace(cfg.optim, max_steps=8))
    with pytest.raises(UserError, match=r"videos failed to load \(> data.max_bad_fraction=0.0\)"):
        train(strict)


def test_lora_export_loads_in_plain_transformers(tmp_path, suite):
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = tiny_config(tmp_path / "lora", suite, "direct", max_steps=2, lr=5e-2)
    cfg = replace(cfg, model=replace(cfg.model, lora=replace(cfg.model.lora, enabled=True, r=4, alpha=8)))
    final = train(cfg)
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
    assert main(["export", str(final), str(tmp_path / "merged")]) == 0
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in model.named_parameters())
    from peft import PeftModel

    from stormvl.training.build import _load

    base = _load(cfg.model.backbone, cfg)
    peft = PeftModel.from_pretrained(base.model, str(final)).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        want = peft(input_ids=ids).logits
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        untrained = _load(cfg.model.backbone, cfg).model(input_ids=ids).logits
    assert not torch.allclose(got, untrained, atol=1e-4)  # the adapters did change the model
    assert main(["export", str(tmp_path / "merged"), str(tmp_path / "again")]) == 2  # not LoRA


def test_cli_train_overrides_and_bad_config(tmp_path, suite, capsys):
    import yaml

    from stormvl.config import to_dict

    cfg = to_dict(tiny_config(tmp_path / "cli", suite, "latent", max_steps=1))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "method.k=3", "optim.max_steps=2"]) == 0
    assert read_meta(tmp_path / "cli" / "checkpoints" / "step-000002")["k"] == 3
    assert main(["train", str(tmp_path / "c.yaml"), "optim.lrr=1", "method.name=magic"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr: unknown key" in err and "method.name: 'magic' is not one of" in err
    assert main(["train", str(tmp_path / "c.yaml"), "--resume", "optim.max_steps=3"]) == 2  # K differs
    assert "method.k" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "c.yaml"), "--resume", "method.k=3", "optim.max_steps=3"]) == 0
    assert [s for s, _ in list_checkpoints(tmp_path / "cli")][-1] == 3
