"""Training data pieces without a model: importers, video budget, sampler, bad media."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import train_fixtures  # noqa: F401  (one torch thread)
from stormvl.data.manifest import Sample, read_manifest, write_manifest
from stormvl.data.video import write_video
from stormvl.errors import ManifestError, UserError
from stormvl.training.config import DataConfig, VideoConfig
from stormvl.training.data import (
    Item,
    ResumableSampler,
    Skipped,
    VideoQADataset,
    load_samples,
    make_collate,
)
from stormvl.training.importers import import_llamafactory, import_video_r1, split_options
from stormvl.training.video_settings import backbone_counter, plan_video, with_max_pixels


def _video(path, n=8, h=32, w=32, seed=0):
    rng = np.random.default_rng(seed)
    write_video(path, rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8), fps=4)


# --- importers -------------------------------------------------------------------------------


def test_llamafactory_messages_with_dataset_info(tmp_path):
    recs = [
        {"messages": [{"role": "user", "content": "<video>Where is the ball?\nA. left\nB. right"},
                      {"role": "assistant", "content": "<think>it moved</think><answer>B</answer>"}],
         "videos": ["v/a.mp4"]},
        {"messages": [{"role": "user", "content": "<video>Describe the clip."},
                      {"role": "assistant", "content": "A cat."}], "videos": ["v/b.mp4"]},
        {"messages": [{"role": "user", "content": "No video here\nA. x\nB. y"},
                      {"role": "assistant", "content": "A"}]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"vid": {
        "file_name": "d.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "videos": "videos"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant"}}}))
    rep = import_llamafactory("vid", tmp_path / "dataset_info.json")
    assert len(rep.samples) == 2
    s, free = rep.samples
    assert (s.question, s.options, s.answer, s.rationale) == ("Where is the ball?", ["left", "right"], "B", "it moved")
    assert s.video == "v/a.mp4"
    assert (free.question, free.options, free.answer) == ("Describe the clip.", [], "A cat.")
    assert dict(rep.skipped) == {"no video": 1}
    with pytest.raises(ManifestError, match="no dataset named 'nope'"):
        import_llamafactory("nope", tmp_path / "dataset_info.json")


def test_llamafactory_sharegpt_defaults_and_errors(tmp_path):
    rec = {"conversations": [{"from": "human", "value": "<video>Q?\n(A) red\n(B) blue\n(C) green"},
                             {"from": "gpt", "value": "blue"}], "videos": ["x.mp4"]}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    s = import_llamafactory(tmp_path / "d.jsonl").samples[0]
    assert s.options == ["red", "blue", "green"] and s.answer == "B"
    rec["conversations"][1]["value"] = "D"  # not among 3 options
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(ManifestError, match=r"d.jsonl: row 0: assistant reply"):
        import_llamafactory(tmp_path / "d.jsonl")
    rec["videos"] = ["x.mp4", "y.mp4"]  # placeholder count mismatch
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(ManifestError, match="1 <video> placeholders for 2 videos"):
        import_llamafactory(tmp_path / "d.jsonl")


def test_video_r1_schema(tmp_path):
    rows = [
        {"problem_id": 7, "problem": "Which way does it turn?", "data_type": "video",
         "problem_type": "multiple choice", "options": ["A. left", "B. right", "C. none"],
         "process": "<think>The arrow turns clockwise.</think>", "solution": "<answer>B</answer>",
         "path": "./clips/7.mp4", "data_source": "synthetic"},
        {"problem_id": 8, "problem": "How many?", "data_type": "video", "problem_type": "video eval",
         "options": [], "process": "", "solution": "<answer>3</answer>", "path": "./clips/8.mp4"},
        {"problem_id": 9, "problem": "img", "data_type": "image", "problem_type": "multiple choice",
         "options": ["A. a", "B. b"], "solution": "<answer>A</answer>", "path": "i.jpg"},
    ]
    (tmp_path / "r1.json").write_text(json.dumps(rows))
    rep = import_video_r1(tmp_path / "r1.json")
    assert [s.id for s in rep.samples] == ["7"]
    s = rep.samples[0]
    assert (s.video, s.answer, s.options, s.rationale) == ("clips/7.mp4", "B", ["left", "right", "none"],
                                                         "The arrow turns clockwise.")
    assert dict(rep.skipped) == {"problem_type video eval": 1, "not a video": 1}
    del rows[0]["solution"]
    (tmp_path / "r1.json").write_text(json.dumps(rows))
    with pytest.raises(ManifestError, match=r"row 0: missing field 'solution'"):
        import_video_r1(tmp_path / "r1.json")


# LLaMA-Factory's data/mllm_video_demo.json and its dataset_info.json entry, as published
LF_VIDEO_DEMO = [
    {"messages": [{"content": "<video>Why is this video funny?", "role": "user"},
                  {"content": "Because a baby is reading, and he is so cute!", "role": "assistant"}],
     "videos": ["mllm_demo_data/1.mp4"]},
    {"messages": [{"content": "<video>What is she doing?", "role": "user"},
                  {"content": "She is cooking.", "role": "assistant"}],
     "videos": ["mllm_demo_data/2.avi"]},
    {"messages": [{"content": "<video>What's in the video?", "role": "user"},
                  {"content": "A baby is playing in the living room.", "role": "assistant"}],
     "videos": ["mllm_demo_data/3.mp4"]},
]
LF_VIDEO_DEMO_INFO = {"mllm_video_demo": {
    "file_name": "mllm_video_demo.json", "formatting": "sharegpt",
    "columns": {"messages": "messages", "videos": "videos"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
             "assistant_tag": "assistant"}}}


def test_llamafactory_video_demo_becomes_open_ended_samples(tmp_path):
    (tmp_path / "mllm_video_demo.json").write_text(json.dumps(LF_VIDEO_DEMO, indent=2))
    (tmp_path / "dataset_info.json").write_text(json.dumps(LF_VIDEO_DEMO_INFO))
    rep = import_llamafactory("mllm_video_demo", tmp_path / "dataset_info.json")
    assert not rep.skipped
    got = [(s.video, s.question, s.options, s.answer, s.rationale) for s in rep.samples]
    assert got == [
        ("mllm_demo_data/1.mp4", "Why is this video funny?", [], "Because a baby is reading, and he is so cute!", None),
        ("mllm_demo_data/2.avi", "What is she doing?", [], "She is cooking.", None),
        ("mllm_demo_data/3.mp4", "What's in the video?", [], "A baby is playing in the living room.", None)]
    # the same file without the registry (messages detected), and through the trainer's loader
    assert import_llamafactory(tmp_path / "mllm_video_demo.json").samples == rep.samples
    cfg = DataConfig(train="mllm_video_demo", format="llamafactory",
                     dataset_info=str(tmp_path / "dataset_info.json"), split=None)
    samples, root, summary = load_samples(cfg)
    assert len(samples) == 3 and root == tmp_path and summary.startswith("3 samples")
    # written as schema 2 and read back unchanged
    write_manifest(tmp_path / "m.jsonl", samples)
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["schema"] for r in rows] == [2, 2, 2]
    assert read_manifest(tmp_path / "m.jsonl") == samples


def test_llamafactory_open_reply_tags_and_empty_reply(tmp_path):
    rec = {"conversations": [{"from": "human", "value": "<video>How many cups are there?"},
                             {"from": "gpt", "value": "<think>I count them: one, two, three."
                                                      "</think><answer>3</answer>"}],
           "videos": ["x.mp4"]}
    (tmp_path / "d.json").write_text(json.dumps([rec]))
    (s,) = import_llamafactory(tmp_path / "d.json").samples
    assert (s.question, s.options, s.answer, s.rationale) == (
        "How many cups are there?", [], "3", "I count them: one, two, three.")
    rec["conversations"][1]["value"] = "<think>no idea</think>"
    (tmp_path / "d.json").write_text(json.dumps([rec]))
    with pytest.raises(ManifestError, match=r"d.json: row 0: field 'value': the assistant reply "
                                            "has no answer text"):
        import_llamafactory(tmp_path / "d.json")


def test_video_r1_open_types_keep_their_answer_text(tmp_path):
    base = {"data_type": "video", "options": [], "process": "<think>Let me look.</think>",
            "data_source": "LLaVA-Video-178K"}
    rows = [
        {**base, "problem_id": 1, "problem": "How many times does the ball bounce?",
         "problem_type": "numerical", "solution": "<answer>3</answer>", "path": "./v/1.mp4"},
        {**base, "problem_id": 2, "problem": "What does the sign say?", "problem_type": "OCR",
         "solution": "<answer>NO PARKING</answer>", "path": "./v/2.mp4"},
        {**base, "problem_id": 3, "problem": "What cooking action does the person perform?",
         "problem_type": "free-form", "path": "./v/3.mp4",
         "solution": "<answer>The person cracks an egg into the pan.</answer>"},
        {**base, "problem_id": 4, "problem": "How far does the car travel, in metres?",
         "problem_type": "regression", "solution": "<answer>12.5</answer>", "path": "./v/4.mp4"},
        {**base, "problem_id": 5, "problem": "Which way?", "problem_type": "multiple choice",
         "options": ["A. left", "B. right"], "solution": "<answer>B</answer>", "path": "./v/5.mp4"},
        {**base, "problem_id": 6, "problem": "What is shown?", "problem_type": "free-form",
         "data_type": "image", "solution": "<answer>Wetsuit</answer>", "path": "./i/6.png"},
    ]
    (tmp_path / "r1.json").write_text(json.dumps(rows))
    rep = import_video_r1(tmp_path / "r1.json")
    got = {s.id: (s.video, s.options, s.answer, s.rationale, s.meta) for s in rep.samples}
    src = {"data_source": "LLaVA-Video-178K"}
    assert got == {
        "1": ("v/1.mp4", [], "3", "Let me look.", {"problem_type": "numerical", **src}),
        "2": ("v/2.mp4", [], "NO PARKING", "Let me look.", {"problem_type": "OCR", **src}),
        "3": ("v/3.mp4", [], "The person cracks an egg into the pan.", "Let me look.",
              {"problem_type": "free-form", **src}),
        "4": ("v/4.mp4", [], "12.5", "Let me look.", {"problem_type": "regression", **src}),
        "5": ("v/5.mp4", ["left", "right"], "B", "Let me look.", src),
    }
    assert dict(rep.skipped) == {"not a video": 1}
    rows[1]["solution"] = "<answer> </answer>"
    (tmp_path / "r1.json").write_text(json.dumps(rows))
    with pytest.raises(ManifestError, match=r"r1.json: row 1: field 'solution' .* no answer text"):
        import_video_r1(tmp_path / "r1.json")


def test_split_options_requires_consecutive_letters():
    assert split_options("Q\nA. x\nC. y") == ("Q", ["x C. y"])  # C is not B: a wrapped line
    assert split_options("Q\nOptions:\nA: x\nB: y")[1] == ["x", "y"]


# --- video budget ----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def backbone(request):
    from stormvl.backbones.tiny import build_tiny

    return build_tiny(family=request.param, size="tiny", seed=0)


@pytest.mark.parametrize("h,w,frames,budget", [(480, 640, 32, 256), (1080, 1920, 16, 1000),
                                               (64, 64, 7, 3), (360, 200, 64, 40)])
def test_plan_never_exceeds_budget_and_keeps_whole_spans(backbone, h, w, frames, budget):
    tp = backbone.temporal_patch
    vc = VideoConfig(num_frames=frames, min_pixels=backbone.video.min_pixels,
                     max_pixels=backbone.video.max_pixels * 16, max_visual_tokens=budget)
    try:
        plan = plan_video(h, w, frames, vc, backbone_counter(backbone), tp)
    except UserError as exc:  # only when one group at min_pixels is over budget
        assert "below one frame group" in str(exc)
        return
    assert plan.tokens <= budget and plan.num_frames % tp == 0 and plan.num_frames >= tp
    # nothing is cut: the backbone's own preprocessing at the planned bound makes exactly
    # plan.tokens placeholders, all of them inside the budget
    frames_in = np.zeros((plan.num_frames, h, w, 3), np.uint8)
    vi = with_max_pixels(backbone, plan.max_pixels).preprocess_video(frames_in, np.arange(plan.num_frames) / 4)
    assert vi.n_tokens == plan.tokens


def test_plan_prefers_resolution_then_frames_and_refuses_impossible(backbone):
    count, tp = backbone_counter(backbone), backbone.temporal_patch
    lo, hi = backbone.video.min_pixels, backbone.video.max_pixels * 16
    vc = VideoConfig(num_frames=16, min_pixels=lo, max_pixels=hi, max_visual_tokens=100_000)
    full = plan_video(224, 224, 16, vc, count, tp)
    assert full.max_pixels == hi and full.num_frames == 16
    at_min = count(16, 224, 224, lo)
    squeezed = plan_video(224, 224, 16, vc, count, tp, budget=at_min)
    assert squeezed.num_frames == 16 and squeezed.tokens <= at_min  # resolution went first
    fewer = plan_video(224, 224, 16, vc, count, tp, budget=max(1, at_min // 2))
    assert fewer.num_frames < 16 and fewer.tokens <= max(1, at_min // 2)
    with pytest.raises(UserError, match="max_visual_tokens=0"):
        plan_video(224, 224, 16, vc, count, tp, budget=0)


# --- sampler ---------------------------------------------------------------------------------


def _samples(n, levels=("1", "2")):
    return [Sample(f"s{i}", "v.mp4", "q", ["a", "b"], "A", difficulty=levels[i % len(levels)])
            for i in range(n)]


def test_sampler_resume_and_ddp_slices():
    samples, cfg = _samples(10), DataConfig(train="x")
    one = ResumableSampler(samples, 4, cfg, seed=3)
    it = iter(one)
    full = [next(it) for _ in range(6)]
    resumed = iter(ResumableSampler(samples, 4, cfg, seed=3, start=4))
    assert [next(resumed) for _ in range(2)] == full[4:]  # skip by arithmetic, same order
    r0, r1 = (iter(ResumableSampler(samples, 2, cfg, seed=3, world=2, rank=r)) for r in (0, 1))
    for b in range(6):
        assert next(r0) + next(r1) == full[b]
    # each epoch visits every sample once
    flat = [i for b in full for i in b][:20]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))


def test_sampler_curriculum_mixing():
    samples = _samples(20)
    cfg = DataConfig(train="x", difficulty_weights={"1": 0.5, "2": 0.5},
                     curriculum=[{"until_step": 2, "weights": {"1": 1.0}}])
    s = ResumableSampler(samples, 8, cfg, seed=0, grad_accum=2)
    early = [samples[i].difficulty for b in range(4) for i in s.global_batch(b)]
    late = [samples[i].difficulty for b in range(4, 40) for i in s.global_batch(b)]
    assert set(early) == {"1"}
    assert 0.4 < late.count("2") / len(late) < 0.6
    bad = DataConfig(train="x", difficulty_weights={"9": 1.0})
    with pytest.raises(UserError, match="select no sample"):
        ResumableSampler(samples, 2, bad).global_batch(0)


# --- dataset: decoding, bad media, budget ----------------------------------------------------


def test_dataset_skips_bad_media_with_reason(tmp_path):
    _video(tmp_path / "ok.mp4", n=8, h=64, w=48)
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00not a video" * 10)
    rows = [Sample("a", "ok.mp4", "q", ["x", "y"], "A"),
            Sample("b", "missing.mp4", "q", ["x", "y"], "A"),
            Sample("c", "corrupt.mp4", "q", ["x", "y"], "B"),
            Sample("d", "../escape.mp4", "q", ["x", "y"], "B")]
    write_manifest(tmp_path / "m.jsonl", rows)
    samples, root, _ = load_samples(DataConfig(train=str(tmp_path / "m.jsonl"), split=None))
    vc = VideoConfig(num_frames=4, max_visual_tokens=16, min_pixels=28 * 28, max_pixels=56 * 56)
    ds = VideoQADataset(samples, root, vc, lambda t, h, w, px: (t // 2) * 2, 2)
    col = make_collate(None)([ds[i] for i in range(4)])
    assert col.ids == ["a"] and col.requested == 4
    reasons = {s.file: s.reason for s in col.skipped}
    assert "not found" in reasons["missing.mp4"]
    assert "corrupt.mp4" in reasons["corrupt.mp4"]
    assert "escapes the media root" in reasons["../escape.mp4"]
    loaded = col.batch[0]
    assert loaded.frames.shape[0] == loaded.plan.num_frames == 4 and loaded.plan.tokens <= 16
    assert isinstance(ds[0], Item) and isinstance(ds[1], Skipped)


def test_cache_decoded_decodes_each_clip_once(tmp_path, monkeypatch):
    import stormvl.data.clip_cache as data_mod

    _video(tmp_path / "ok.mp4", n=8, h=64, w=48)
    rows = [Sample("a", "ok.mp4", "q", ["x", "y"], "A"), Sample("b", "missing.mp4", "q", ["x", "y"], "A")]
    write_manifest(tmp_path / "m.jsonl", rows)
    samples, root, _ = load_samples(DataConfig(train=str(tmp_path / "m.jsonl"), split=None))
    vc = VideoConfig(num_frames=4, max_visual_tokens=16, min_pixels=28 * 28, max_pixels=56 * 56)
    calls = []
    real = data_mod.OpenVideo.read
    monkeypatch.setattr(data_mod.OpenVideo, "read", lambda v, *a, **k: calls.append(v.path) or real(v, *a, **k))
    plain = VideoQADataset(samples, root, vc, lambda t, h, w, px: (t // 2) * 2, 2)
    kept = VideoQADataset(samples, root, vc, lambda t, h, w, px: (t // 2) * 2, 2, keep_decoded=True)
    first = kept[0].features
    for _ in range(3):
        again = kept[0].features
        assert isinstance(kept[1], Skipped)  # a failure is not remembered as a clip
    assert len(calls) == 1 and again is first
    ref = plain[0].features
    assert (ref.frames == first.frames).all() and (ref.timestamps == first.timestamps).all()
    assert len(calls) == 2 and set(kept.decoded) == {0}
    # what is kept is the prepared sample: preparation (resize, normalise, tokenise) runs once
    prepared_calls = []
    prep = VideoQADataset(samples, root, vc, lambda t, h, w, px: (t // 2) * 2, 2,
                          prepare=lambda x: prepared_calls.append(x) or ("ready", x.frames),
                          keep_decoded=True)
    assert prep[0].features[0] == "ready" and prep[0].features is prep[0].features
    # the decoded sample is kept beside what was made of it; the frames both hold count once
    assert len(prepared_calls) == 1
    assert prep.kept_bytes == first.frames.nbytes + first.timestamps.nbytes
    calls.clear()
    # a byte bound below one clip keeps nothing: every read decodes again
    small = VideoQADataset(samples, root, vc, lambda t, h, w, px: (t // 2) * 2, 2, keep_decoded=True,
                           keep_bytes=first.frames.nbytes - 1)
    small[0], small[0]
    assert len(calls) == 2 and small.decoded == {} and small.kept_bytes == 0


def test_clip_cache_is_shared_by_runs_and_changes_no_sample(tmp_path, monkeypatch):
    """Two runs over one folder of decoded clips (data.clip_cache): the second decodes
    nothing and gets the same frames, timestamps and oracle thought frames."""
    import stormvl.data.clip_cache as cc
    from stormvl.data.clip_cache import ClipReader

    _video(tmp_path / "ok.mp4", n=8, h=64, w=48)
    _video(tmp_path / "th.mp4", n=8, h=64, w=48)
    write_manifest(tmp_path / "m.jsonl", [Sample("a", "ok.mp4", "q", ["x", "y"], "A",
                                                 thought_video="th.mp4")])
    samples, root, _ = load_samples(DataConfig(train=str(tmp_path / "m.jsonl"), split=None))
    vc = VideoConfig(num_frames=4, max_visual_tokens=32, min_pixels=28 * 28, max_pixels=56 * 56)

    def dataset(clips):
        return VideoQADataset(samples, root, vc, lambda t, h, w, px: (t // 2) * 2, 2,
                              oracle_frames=2, clips=clips)

    plain = dataset(None)[0].features
    first = dataset(ClipReader(tmp_path / "clips"))[0].features
    monkeypatch.setattr(cc.OpenVideo, "read", lambda *a, **k: pytest.fail("decoded again"))
    monkeypatch.setattr(cc, "OpenVideo", lambda *a, **k: pytest.fail("opened again"))
    second = dataset(ClipReader(tmp_path / "clips"))[0].features
    for got in (first, second):
        for name in ("frames", "timestamps", "thought_frames", "thought_timestamps"):
            np.testing.assert_array_equal(getattr(got, name), getattr(plain, name))
        assert got.plan == plain.plan and got.thought_plan == plain.thought_plan


def test_sampler_variants_follow_the_rationale_curriculum_by_optimizer_step():
    from stormvl.training.config import MethodConfig

    samples = [Sample(f"s{i}", "v.mp4", "q", ["x", "y"], "A") for i in range(6)]
    method = MethodConfig("latent", internalize_at=[2, 3])
    assert [method.rationale_stage(s) for s in range(5)] == [0, 0, 1, None, None]
    # 2 micro-batches per optimizer step: the variant changes on optimizer-step boundaries
    it = iter(ResumableSampler(samples, 2, DataConfig(train="m"), seed=1, grad_accum=2,
                               variant_at=method.rationale_stage))
    batches = [next(it) for _ in range(8)]
    assert [{v for _, v in b} for b in batches] == [{0}, {0}, {0}, {0}, {1}, {1}, {None}, {None}]
    plain = iter(ResumableSampler(samples, 2, DataConfig(train="m"), seed=1, grad_accum=2))
    assert [[i for i, _ in b] for b in batches] == [next(plain) for _ in range(8)]  # same order
    assert "increasing step numbers" in MethodConfig("latent", internalize_at=[3, 2]).validate()[0]
    assert "only latent and storm" in MethodConfig("direct", internalize_at=[1]).validate()[0]


def test_cache_decoded_prepares_again_for_a_new_variant(tmp_path, monkeypatch):
    import stormvl.data.clip_cache as data_mod

    _video(tmp_path / "ok.mp4", n=8, h=64, w=48)
    write_manifest(tmp_path / "m.jsonl", [Sample("a", "ok.mp4", "q", ["x", "y"], "A")])
    samples, root, _ = load_samples(DataConfig(train=str(tmp_path / "m.jsonl"), split=None))
    vc = VideoConfig(num_frames=4, max_visual_tokens=16, min_pixels=28 * 28, max_pixels=56 * 56)
    decoded, media, seen = [], [], []
    real = data_mod.OpenVideo.read
    monkeypatch.setattr(data_mod.OpenVideo, "read", lambda v, *a, **k: decoded.append(v.path) or real(v, *a, **k))
    ds = VideoQADataset(samples, root, vc, lambda t, h, w, px: (t // 2) * 2, 2,
                        prepare=lambda x: seen.append(x.variant) or ("text", x.variant, x.media),
                        keep_decoded=True,
                        prepare_media=lambda x: media.append(1) or torch.from_numpy(x.frames).float())
    first = ds[(0, 0)].features
    assert first[:2] == ("text", 0) and ds[(0, 0)].features is first
    assert ds[(0, 1)].features[:2] == ("text", 1) and ds[0].features[:2] == ("text", None)
    assert seen == [0, 1, None]  # prepared once for each variant
    # ... from the sample kept: decoded once and its media made once, shared by every variant
    assert len(decoded) == 1 and len(media) == 1 and ds[0].features[2] is first[2]
    # the kept bytes: timestamps and the media once, whatever the variant; the decoded frames
    # are not kept once the media are made from them
    loaded = ds.decoded[0].loaded
    assert loaded.frames is None and loaded.media is first[2]
    assert ds.kept_bytes == loaded.timestamps.nbytes + first[2].nbytes
    # without a cache every request decodes and makes its media again
    plain = VideoQADataset(samples, root, vc, lambda t, h, w, px: (t // 2) * 2, 2,
                           prepare=lambda x: x.media, prepare_media=lambda x: media.append(1) or 1)
    plain[(0, 0)], plain[(0, 1)]
    assert len(decoded) == 3 and len(media) == 3


def test_trainer_prepare_from_kept_media_equals_a_fresh_one(tmp_path):
    """The trainer's hooks: a sample prepared from media made once (the dataset's cache) is
    the sample prepared from its frames, for every variant of the latent curriculum."""
    from stormvl.training.build import build_model
    from stormvl.training.config import MethodConfig, TrainConfig
    from stormvl.training.loop import make_prepare, make_prepare_media
    from stormvl.training.video_settings import backbone_counter

    _video(tmp_path / "ok.mp4", n=8, h=64, w=48)
    write_manifest(tmp_path / "m.jsonl", [Sample("a", "ok.mp4", "q", ["x", "y"], "A",
                                                 rationale="One. Two. Three.")])
    cfg = TrainConfig(method=MethodConfig("latent", k=2, internalize_at=[1, 2]))
    bb = build_model(cfg).backbone
    samples, root, _ = load_samples(DataConfig(train=str(tmp_path / "m.jsonl"), split=None))
    vc = VideoConfig(num_frames=4, max_visual_tokens=16, min_pixels=28 * 28, max_pixels=56 * 56)
    args = (samples, root, vc, backbone_counter(bb), bb.temporal_patch, make_prepare(bb, cfg))
    kept = VideoQADataset(*args, keep_decoded=True, prepare_media=make_prepare_media(bb))
    fresh = VideoQADataset(*args)
    for variant in (0, 1, None):
        a, b = kept[(0, variant)].features, fresh[(0, variant)].features
        assert a.input_ids == b.input_ids and a.labels == b.labels
        assert torch.equal(a.position_ids, b.position_ids)
        for va, vb in zip(a.videos, b.videos, strict=True):
            assert torch.equal(va.pixel_values, vb.pixel_values) and va.key == vb.key
    assert kept[(0, 1)].features.videos[0] is kept[(0, None)].features.videos[0]
    assert len(kept[(0, 0)].features.labels) > len(kept[(0, None)].features.labels)


def test_every_shipped_train_config_loads():
    from stormvl.config import load_config
    from stormvl.training.config import TrainConfig

    paths = sorted((Path(__file__).parents[1] / "configs" / "train").glob("*.yaml"))
    assert len(paths) >= 8
    for p in paths:
        cfg = load_config(TrainConfig, p)
        assert cfg.method.name in p.name or "storm" in p.name
    seven = load_config(TrainConfig, paths[0].parent / "qwen2_5_vl_7b_storm_stage1.yaml")
    assert seven.model.lora.enabled and seven.model.freeze_vision and seven.model.dtype == "bfloat16"
    with pytest.raises(UserError, match="freeze_vision=true"):
        load_config(TrainConfig, paths[0].parent / "qwen2_5_vl_7b_storm_stage1.yaml",
                    ["model.freeze_vision=false"])
