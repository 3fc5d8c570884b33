"""Open-ended questions at evaluation: a suite manifest's rows without options are asked the
question alone and judged; open items decode to the free-form budget in their own batch."""

from __future__ import annotations

from pathlib import Path

import fixtures_tasks as ft
from stormvl.data.manifest import Sample, read_manifest, write_manifest
from stormvl.latent import format_question
from stormvl.tasks import breakdowns, load_benchmark
from stormvl.tasks.base import EvalItem
from stormvl.tasks.score import read_predictions, score

OPEN = Sample("s4", "videos/s4.mp4", "What is she doing?", [], "She is cooking.", split="test")


class ExactJudge:
    """Stands in for the LLM judge: correct when the reply is the answer (case aside)."""

    def __init__(self):
        self.calls = []

    def binary(self, question, answer, prediction):
        self.calls.append((question, answer, prediction))
        return prediction.strip().lower() == answer.strip().lower()

    def caption_choice(self, caption, mc_question):
        raise AssertionError("no captioning here")


def test_suite_open_ended_rows_are_asked_plainly_and_only_judged(tmp_path):
    root = ft.write_synth(tmp_path / "s", videos=False)
    write_manifest(root / "manifest.jsonl", [*read_manifest(root / "manifest.jsonl"), OPEN])
    items = load_benchmark("synth", root, check_media=False)
    mc, free = items[0], items[-1]
    # the question alone, as training prompts an open-ended sample; multiple choice unchanged
    assert (free.format, free.prompt, free.options, free.answer) == (
        "open_ended", "What is she doing?", [], "She is cooking.")
    assert free.prompt == format_question(OPEN.question, OPEN.options)
    assert mc.format == "mc" and mc.prompt == (
        "Where is the ball (s0)?\nA. cup 1\nB. cup 2\nC. cup 3\nD. cup 4\n"
        "Answer with the option's letter from the given choices directly.")
    rows = [("s0", "A"), ("s1", "C"), ("s2", "C"), ("s3", "D"), ("s4", "she is cooking.")]
    preds = read_predictions(ft.write_predictions(tmp_path / "p.jsonl", rows))
    r = score("synth", items, preds, breakdowns("synth"))
    assert (r["n_correct"], r["n_scored"], r["not_scored"]) == (3, 4, {"open_ended": 1})
    judge = ExactJudge()
    r = score("synth", items, preds, breakdowns("synth"), judge)
    assert (r["n_correct"], r["n_scored"]) == (4, 5)
    assert judge.calls == [("What is she doing?", "She is cooking.", "she is cooking.")]


def _checkpoint(path: Path) -> Path:
    from stormvl.backbones import VideoSettings
    from stormvl.backbones.tiny import build_tiny
    from stormvl.training.build import Built, run_meta, save_model
    from stormvl.training.config import MethodConfig, TrainConfig, VideoConfig

    bb = build_tiny("qwen2_5_vl", "tiny", seed=0)
    cfg = TrainConfig(method=MethodConfig(name="direct"), video=VideoConfig(
        num_frames=4, min_pixels=28 * 28, max_pixels=56 * 56, max_visual_tokens=64))
    bb.video = VideoSettings(min_pixels=cfg.video.min_pixels, max_pixels=cfg.video.max_pixels)
    save_model(Built(bb), path, run_meta(cfg, 0))
    return path


def test_open_items_get_the_free_form_budget_apart_from_multiple_choice(tmp_path):
    from stormvl.evaluation import EvalSettings, Runner, load_model
    from stormvl.evaluation.runner import FREE_FORM_MAX_NEW_TOKENS

    video = ft.tiny_video(tmp_path / "v.mp4")
    model = load_model(_checkpoint(tmp_path / "ckpt"), "cpu")
    runner = Runner(model, EvalSettings())
    assert (runner.gen["max_new_tokens"], runner.gen["free_form_max_new_tokens"]) == (
        16, FREE_FORM_MAX_NEW_TOKENS)
    mc = EvalItem("m", "x", video, format_question("Where?", ["left", "right"]), "A")
    free = EvalItem("o", "x", video, "What happens?", "", format="open_ended")
    prepared = [runner.prepare(mc), runner.prepare(free)]
    mixed = runner.run(prepared)
    alone_mc = runner.run(prepared[:1])
    alone_free = runner.run(prepared[1:], max_new_tokens=FREE_FORM_MAX_NEW_TOKENS)
    # each kind as if generated alone with its own budget, in the batch's order
    assert mixed.texts == [alone_mc.texts[0], alone_free.texts[0]]
    assert mixed.n_generated == [alone_mc.n_generated[0], alone_free.n_generated[0]]
    assert mixed.n_generated[0] <= 16 < mixed.n_generated[1]  # this random model never stops
    assert tuple(mixed.latents.shape[:2]) == (2, 0)
    # a budget the run sets applies to both kinds
    capped = Runner(model, EvalSettings(max_new_tokens=8))
    assert capped.gen["free_form_max_new_tokens"] == 8
    assert max(capped.run(prepared).n_generated) <= 8
