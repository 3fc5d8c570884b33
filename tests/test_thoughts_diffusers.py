"""`diffusers`: a tiny random-init LTX-Video I2V pipeline through the real load / call path.

Checks shapes, determinism under a seed, resume and sharding - not visual quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from stormvl.cli import main
from stormvl.data.manifest import Sample, read_manifest
from stormvl.data.video import decode_frames
from stormvl.errors import ConfigError, UserError
from stormvl.thoughts import build_generator, run_thoughts
from stormvl.thoughts.diffusers_gen import build_prompt, save_tiny_pipeline
from test_thoughts_runner import make_dataset, outputs

pytest.importorskip("diffusers")

TINY = {"device": "cpu", "dtype": "float32", "height": 32, "width": 32, "num_frames": 9,
        "steps": 2, "guidance_scale": 1.0, "lossless": True}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n=4, size=(20, 28))


def config(tmp_path, tiny, **kw) -> str:
    path = tmp_path / f"gen{len(list(tmp_path.glob('gen*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"model": str(tiny), **TINY, **kw}))
    return str(path)


def run(data, out, cfg, *extra) -> int:
    return main(["thoughts", "--manifest", str(data), "--out", str(out), "--generator",
                 "diffusers", "--config", cfg, "--no-progress", *extra])


def test_tiny_pipeline_shapes_and_determinism(tmp_path, tiny, data):
    cfg = config(tmp_path, tiny, batch_size=2)
    assert run(data, tmp_path / "a", cfg) == 0
    assert run(data, tmp_path / "b", cfg) == 0
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")  # same seed -> same bytes
    rows = read_manifest(tmp_path / "a" / "manifest.jsonl")
    assert len(rows) == 4
    videos = [decode_frames(tmp_path / "a" / r.thought_video)[0] for r in rows]
    for v in videos:
        assert v.shape == (9, 20, 28, 3)  # num_frames, resized to the input video's size
    assert not np.array_equal(videos[0], videos[1])  # per-sample noise and keyframe
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["summary"]["generated"] == 4 and stats["gpu"] == {}
    assert run(data, tmp_path / "c", config(tmp_path, tiny, batch_size=2, seed=1)) == 0
    other = decode_frames(tmp_path / "c" / rows[0].thought_video)[0]
    assert not np.array_equal(other, videos[0])


def test_keyframe_and_prompt_condition_the_output(tmp_path, tiny, data):
    gen = build_generator("diffusers", config(tmp_path, tiny))
    gen.load()
    sample = read_manifest(data)[0]
    info_clip = _clip(data, sample, gen)
    base = gen.generate(sample, info_clip)
    assert base.shape == (9, 20, 28, 3) and base.dtype == np.uint8
    assert np.array_equal(gen.generate(sample, info_clip), base)
    flipped = type(info_clip)(info_clip.frames[:, ::-1].copy(), info_clip.timestamps, info_clip.info)
    assert not np.array_equal(gen.generate(sample, flipped), base)
    gen.config.prompt_template = "the ball moves left of the box"
    assert not np.array_equal(gen.generate(sample, info_clip), base)
    # keyframe=end decodes the frame at the question's end bound, not the last one.
    gen.config.keyframe = "end"
    info = info_clip.info
    assert gen.frame_indices(sample, info).tolist() == [round(sample.end * info.fps)]
    gen.config.keyframe = "last"
    assert gen.frame_indices(sample, info).tolist() == [info.num_frames - 1]


def _clip(data, sample, gen):
    from stormvl.data.video import probe
    from stormvl.thoughts import InputClip

    path = data.parent / sample.video
    info = probe(path)
    idx = gen.frame_indices(sample, info)
    frames, fps = decode_frames(path, idx)
    return InputClip(frames, idx / fps, info)


def test_resume_and_shards_match_a_straight_run(tmp_path, tiny, data):
    cfg = config(tmp_path, tiny)
    assert run(data, tmp_path / "full", cfg) == 0
    gen = build_generator("diffusers", cfg)
    gen.load()
    real_call, calls = gen.pipe, []

    def killed_on_third(**kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_call(**kw)

    gen.pipe = killed_on_third
    with pytest.raises(KeyboardInterrupt):
        run_thoughts(data, tmp_path / "resumed", gen, progress=False)
    gen.pipe = real_call
    stats = run_thoughts(data, tmp_path / "resumed", gen, progress=False)
    assert (stats.resumed, stats.generated) == (2, 2)
    assert outputs(tmp_path / "resumed") == outputs(tmp_path / "full")
    for i in range(2):
        assert run(data, tmp_path / "sh", cfg, "--shard", f"{i}/2") == 0
    assert main(["thoughts", "merge", str(tmp_path / "sh")]) == 0
    assert outputs(tmp_path / "sh") == outputs(tmp_path / "full")


def test_missing_weights_fail_at_start(tmp_path, data, capsys):
    out = tmp_path / "out"
    cfg = config(tmp_path, tmp_path / "no" / "such" / "model")
    assert run(data, out, cfg) == 2
    err = capsys.readouterr().err
    assert "no pipeline weights at" in err and "no/such/model" in err
    assert not out.exists()  # nothing was written
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(data, out, config(tmp_path, empty)) == 2
    assert "model_index.json not found" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_model_without_gpu_fails_at_start(tmp_path, tiny, data, capsys):
    out = tmp_path / "out"
    assert run(data, out, config(tmp_path, tiny, device="cuda", dtype="bfloat16")) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    assert not out.exists()


def test_prompt_template(tmp_path):
    s = Sample(id="x", video="v.mp4", question=" Where does it go? ", options=["left", "right"],
               answer="B", rationale="It bounces.")
    tpl = "Q: {question} A: {letter}) {answer} of [{options}]. {rationale}"
    assert build_prompt(tpl, s) == "Q: Where does it go? A: B) right of [left, right]. It bounces."
    s.rationale = None
    assert build_prompt("{question} {rationale}", s) == "Where does it go?"
    with pytest.raises(ConfigError, match=r"prompt_template: unknown field\(s\) \['answr'\]"):
        build_generator("diffusers", None, ["prompt_template=Q {answr}"])


def test_pipeline_class_override(tmp_path, tiny, capsys):
    gen = build_generator("diffusers", config(tmp_path, tiny, pipeline_class="LTXImageToVideoPipeline"))
    gen.load()
    assert type(gen.pipe).__name__ == "LTXImageToVideoPipeline"
    with pytest.raises(UserError, match="not an image-to-video pipeline"):
        build_generator("diffusers", config(tmp_path, tiny, pipeline_class="LTXPipeline")).load()
    with pytest.raises(UserError, match="'Nope' is not a diffusers pipeline"):
        build_generator("diffusers", config(tmp_path, tiny, pipeline_class="Nope")).load()
    with pytest.raises(UserError, match="multiples of 32"):
        build_generator("diffusers", config(tmp_path, tiny, height=40)).load()


def test_batched_call_matches_per_sample_calls(tmp_path, tiny, data):
    """Pipelines that cannot take one image per prompt (Wan) are called per sample."""
    gen = build_generator("diffusers", config(tmp_path, tiny, batch_size=2))
    gen.load()
    assert gen.batches_images  # LTX takes a batch of images
    samples = read_manifest(data)[:2]
    clips = [_clip(data, s, gen) for s in samples]
    batched = gen.generate_batch(samples, clips)
    gen.batches_images = False
    single = gen.generate_batch(samples, clips)
    for a, b in zip(batched, single, strict=True):
        assert a.shape == b.shape == (9, 20, 28, 3)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # float summation order only
