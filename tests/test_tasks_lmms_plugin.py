"""The lmms-eval plug-in: imports without lmms-eval, clear errors, request protocol.

The protocol test runs against the real lmms-eval base class when it is importable (a
throwaway venv with ``pip install --no-deps lmms-eval``), and against a minimal stand-in of
the three names the plug-in touches otherwise.
"""

import importlib
import sys
import types
from dataclasses import dataclass, field

import pytest

from stormvl.errors import UserError

try:
    import lmms_eval.api.model  # noqa: F401

    REAL = True
except ImportError:
    REAL = False


def test_imports_and_fails_clearly_without_lmms_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "lmms_eval.api.model", None)
    monkeypatch.setitem(sys.modules, "lmms_eval.models.registry_v2", None)
    mod = importlib.reload(importlib.import_module("stormvl.integrations.lmms_eval"))
    try:
        assert mod.HAVE_LMMS_EVAL is False
        with pytest.raises(UserError, match="lmms-eval is not installed"):
            mod.StormVL(pretrained="ckpt")
        with pytest.raises(UserError, match="lmms-eval is not installed"):
            mod.manifest()
    finally:
        monkeypatch.undo()
        importlib.reload(mod)


def test_truncate_at():
    from stormvl.integrations.lmms_eval import truncate_at

    assert truncate_at("B. red\n\nmore", ["\n\n"]) == "B. red"
    assert truncate_at("A<|im_end|>x", ["<|im_end|>", "x"]) == "A"
    assert truncate_at("C", []) == "C"


# ----------------------------------------------------------------------------------------

def _stub_lmms_eval(monkeypatch):
    """Just the names the plug-in uses: lmms (base), ModelManifest."""

    class lmms:  # noqa: N801 (lmms-eval's name)
        def __init__(self):
            self._rank, self._world_size = 0, 1
            self.cache_hook = types.SimpleNamespace(add_partial=lambda *a: None)
            self.task_dict = {}

    @dataclass(frozen=True)
    class ModelManifest:
        model_id: str
        simple_class_path: str | None = None
        chat_class_path: str | None = None
        aliases: tuple = field(default_factory=tuple)

    pkg = types.ModuleType("lmms_eval")
    api = types.ModuleType("lmms_eval.api")
    model = types.ModuleType("lmms_eval.api.model")
    model.lmms = lmms
    models = types.ModuleType("lmms_eval.models")
    reg = types.ModuleType("lmms_eval.models.registry_v2")
    reg.ModelManifest = ModelManifest
    for name, m in [("lmms_eval", pkg), ("lmms_eval.api", api), ("lmms_eval.api.model", model),
                    ("lmms_eval.models", models), ("lmms_eval.models.registry_v2", reg)]:
        monkeypatch.setitem(sys.modules, name, m)


class FakeRunner:
    def __init__(self, pretrained, **settings):
        self.pretrained, self.settings, self.calls = pretrained, settings, []

    def generate(self, batch, max_new_tokens, do_sample, temperature):
        self.calls.append((len(batch), max_new_tokens, do_sample))
        return [f"B. {prompt} ({len(videos)} video)\n\ntrailing" for videos, prompt in batch]


@pytest.fixture
def plugin(monkeypatch):
    if not REAL:
        _stub_lmms_eval(monkeypatch)
    mod = importlib.reload(importlib.import_module("stormvl.integrations.lmms_eval"))
    monkeypatch.setattr(mod, "_load_runner", lambda p, s: FakeRunner(p, **s))
    yield mod
    monkeypatch.undo()
    importlib.reload(mod)


def _request(i, gen):
    args = (f"question {i}", gen, lambda doc: [doc["video"]], i, "videomme", "test")
    if REAL:
        from lmms_eval.api.instance import Instance

        return Instance("generate_until", args, idx=0,
                        metadata={"task": "videomme", "doc_id": i, "repeats": 1})
    return types.SimpleNamespace(args=args)


def test_generate_until_protocol(plugin):
    m = plugin.StormVL(pretrained="ckpt", num_frames="8", batch_size="2", device="cpu")
    assert m._runner.pretrained == "ckpt"
    assert m._runner.settings == {"num_frames": 8, "fps": None, "k": None, "device": "cpu"}
    m.task_dict = {"videomme": {"test": {i: {"video": f"/v/{i}.mp4"} for i in range(3)}}}
    greedy = {"max_new_tokens": 16, "do_sample": False, "until": ["\n\n"]}
    sampled = {"max_new_tokens": 4, "do_sample": True, "temperature": 0.7}
    reqs = [_request(0, greedy), _request(1, sampled), _request(2, greedy)]
    out = m.generate_until(reqs)
    assert out[0] == "B. question 0 (1 video)" and out[2] == "B. question 2 (1 video)"
    assert out[1] == "B. question 1 (1 video)\n\ntrailing"  # no stop string given
    # same generation settings are batched together; the other group runs apart
    assert sorted(m._runner.calls) == [(1, 4, True), (2, 16, False)]


def test_manifest_registers_stormvl(plugin):
    man = plugin.manifest()
    assert man.model_id == "stormvl"
    assert man.simple_class_path == "stormvl.integrations.lmms_eval.StormVL"
    if REAL:  # lmms-eval's own registry accepts it and resolves the class
        from lmms_eval.models.registry_v2 import ModelRegistryV2

        reg = ModelRegistryV2()
        for mm in reg._coerce_payload_to_manifests(plugin.manifest):
            reg.register_manifest(mm)
        assert reg.get_model_class("stormvl") is plugin.StormVL


def test_bad_model_args(plugin):
    with pytest.raises(UserError, match="pretrained="):
        plugin.StormVL()
    m = plugin.StormVL(pretrained="ckpt")
    with pytest.raises(UserError, match="loglikelihood"):
        m.loglikelihood([])
