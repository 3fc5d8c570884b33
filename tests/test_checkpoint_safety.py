"""Checkpoint folders stormvl must refuse, and model paths it must resolve, through the CLI.

Each bad folder (pickle weights, a pickle beside a Stage-I projector, truncated safetensors,
one family's config with the other's weights, a remote-code config, resume state that does
not unpickle) ends with exit code 2 and one ``error:`` line naming the file; no code from the
folder runs. A training run's folder given as ``--model`` means its newest checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from stormvl.backbones.tiny import build_tiny
from stormvl.cli import main
from stormvl.config import to_dict
from stormvl.evaluation import load_model
from stormvl.training.checkpoint import list_checkpoints
from stormvl.training.loop import train
from train_fixtures import make_suite, tiny_config


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: proof that a file's code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _one_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _answer(model: Path, video: Path) -> int:
    return main(["answer", "--model", str(model), "--video", str(video), "--question", "Which?",
                 "--option", "red", "--option", "blue", "--device", "cpu"])


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return make_suite(tmp_path_factory.mktemp("suite"), n=4)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {f: build_tiny(f, "tiny", seed=2).save(root / f, {}) for f in ("qwen2_5_vl", "qwen3_vl")}


@pytest.fixture(scope="module")
def run(tmp_path_factory, suite) -> Path:
    """A finished 2-step direct run with a checkpoint at each step."""
    out = tmp_path_factory.mktemp("run") / "direct"
    train(tiny_config(out, suite, "direct", max_steps=2, every=1, batch_size=2))
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _to_pickle(folder: Path) -> None:
    """Replace model.safetensors by the same weights as a pickled pytorch_model.bin."""
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def test_pickle_weights_are_refused_with_how_to_convert(ckpts, tmp_path, capsys):
    bad = _copy(ckpts["qwen2_5_vl"], tmp_path / "bin")
    _to_pickle(bad)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")  # the model is refused before the video is read
    assert _answer(bad, video) == 2
    line = _one_error(capsys, str(bad / "pytorch_model.bin"), "safetensors")
    assert "save_pretrained" in line  # how to convert


def test_truncated_safetensors_is_refused(ckpts, tmp_path, capsys):
    bad = _copy(ckpts["qwen3_vl"], tmp_path / "cut")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    assert _answer(bad, video) == 2
    _one_error(capsys, str(bad / "model.safetensors"), "truncated")


def test_config_of_one_family_with_weights_of_the_other_is_refused(ckpts, tmp_path, capsys):
    bad = _copy(ckpts["qwen3_vl"], tmp_path / "mixed")
    shutil.copy(ckpts["qwen2_5_vl"] / "model.safetensors", bad / "model.safetensors")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    assert _answer(bad, video) == 2
    line = _one_error(capsys, str(bad), "config.json", "qwen3_vl", "missing")
    assert "ignore_mismatched_sizes" not in line


def test_remote_code_config_is_refused_in_one_line_without_running_it(tmp_path, capsys):
    bad = tmp_path / "remote"
    bad.mkdir()
    (bad / "config.json").write_text(
        '{"model_type": "evil_vl", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}')
    marker = tmp_path / "ran"
    (bad / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    assert _answer(bad, video) == 2
    line = _one_error(capsys, str(bad / "config.json"), "evil_vl", "own Python code")
    assert "trust_remote_code" not in line and not marker.exists()


def test_training_refuses_a_pickle_model_beside_a_projector(ckpts, suite, tmp_path, capsys):
    """A *.safetensors file of another kind (a Stage-I projector) must not let pickled model
    weights through."""
    base = _copy(ckpts["qwen2_5_vl"], tmp_path / "base")
    _to_pickle(base)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2, 2)}, str(base / "align_projector.safetensors"))
    cfg = to_dict(tiny_config(tmp_path / "out", suite, "direct", max_steps=1))
    cfg["model"]["backbone"] = str(base)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    _one_error(capsys, str(base / "pytorch_model.bin"))
    assert not list_checkpoints(tmp_path / "out")


def test_resume_state_that_does_not_load_is_refused(run, tmp_path, capsys):
    """trainer_state.pt / rng_rank0.pt holding code, or bytes that are not a torch file."""
    marker = tmp_path / "ran"
    torch.save({"trainer": _RunsCode(marker)}, tmp_path / "code.pt")
    cases = {"rng_rank0.pt": b"not a torch file", "trainer_state.pt": (tmp_path / "code.pt").read_bytes(),
             "model.safetensors": None}
    for name, payload in cases.items():
        work = _copy(run, tmp_path / name)
        f = work / "checkpoints" / "step-000002" / name
        f.write_bytes(payload if payload is not None else f.read_bytes()[:1000])
        cfg = yaml.safe_load((run / "config.yaml").read_text())  # the run's resolved config
        cfg["out_dir"], cfg["optim"]["max_steps"] = str(work), 3
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", str(tmp_path / "c.yaml"), "--resume"]) == 2, name
        line = _one_error(capsys, str(f))
        assert ("io.open" in line) == (name == "trainer_state.pt")  # says why it was refused
    assert not marker.exists()


def test_resume_before_the_first_checkpoint_says_how_to_restart(suite, tmp_path, capsys):
    cfg = tiny_config(tmp_path / "out", suite, "direct", max_steps=2, every=2, batch_size=2)

    def kill(run, metrics):
        raise KeyboardInterrupt  # after step 1, before the first checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_step=kill)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", str(tmp_path / "c.yaml"), "--resume"]) == 2
    _one_error(capsys, "no finished checkpoint", "without --resume")
    assert main(["train", str(tmp_path / "c.yaml")]) == 0  # the plain command restarts it
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [2]


def test_a_run_folder_means_its_newest_checkpoint(run, suite, tmp_path, capsys):
    """answer and eval (and so the lmms-eval plug-in, which loads through load_model)."""
    from stormvl.evaluation.runner import load_runner

    final = run / "checkpoints" / "step-000002"
    assert load_model(run).path == str(final.resolve())
    assert load_runner(str(run)).model.path == str(final.resolve())
    video = suite.parent / "v0.mp4"
    assert _answer(final, video) == 0
    want = capsys.readouterr().out.splitlines()[0]
    assert _answer(run, video) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == want and "warning" not in out.err
    # a run killed before its last step: its newest checkpoint, with a warning saying so
    cut = _copy(run, tmp_path / "cut")
    shutil.rmtree(cut / "checkpoints" / "step-000002")
    assert _answer(cut, video) == 0
    assert "stopped at step 1 of 2" in capsys.readouterr().err
    # a folder of runs names them; a run with nothing finished says so
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert _answer(tmp_path, video) == 2
    _one_error(capsys, str(cut), "not a checkpoint")
    assert _answer(tmp_path / "empty", video) == 2
    _one_error(capsys, "no finished checkpoint")
