"""lmms-eval plug-in: run a stormvl checkpoint inside the standard harness.

    pip install lmms-eval            # yourself: it pulls a CUDA torch and ~100 packages
    python -m lmms_eval --model stormvl --model_args pretrained=CKPT,num_frames=16 \
        --tasks videomme,mvbench,tempcompass,mmvu_val

This module imports without lmms-eval; using ``StormVL`` or ``manifest`` without it raises a
clear error. lmms-eval >= 0.7 discovers external models through the ``lmms_eval.models``
entry-point group, whose payload must be a ``ModelManifest`` (or a callable returning one):
``manifest`` below is that payload, pointing at the ``StormVL`` class.

Generation goes through ``stormvl.evaluation.load_runner`` (the evaluator's model runner), so
the harness and ``stormvl eval`` answer with the same code: same prompt layout, latent
rollout, frame sampling and video settings from the checkpoint.
"""

from __future__ import annotations

from typing import Any

from stormvl.errors import UserError

try:  # the real base class when lmms-eval is installed
    from lmms_eval.api.model import lmms as _Base

    HAVE_LMMS_EVAL = True
    _IMPORT_ERROR = ""
except ImportError as _exc:  # keep this module importable; using it raises below
    _Base = object
    HAVE_LMMS_EVAL = False
    _IMPORT_ERROR = f" ({_exc})"

MODEL_ID = "stormvl"
_MISSING = ("lmms-eval is not installed; install it yourself (pip install lmms-eval) to use "
            "the 'stormvl' model in the harness - it is not a stormvl dependency")


def manifest():
    """The ``lmms_eval.models`` entry-point payload: registers ``StormVL`` as ``stormvl``."""
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError as exc:
        raise UserError(f"{_MISSING} ({exc})") from None
    return ModelManifest(model_id=MODEL_ID,
                         simple_class_path=f"{__name__}.{StormVL.__name__}")


def _load_runner(pretrained: str, settings: dict[str, Any]):
    """LEAD HOOK: the evaluator's runner, ``stormvl.evaluation.load_runner``.

    Contract used here: ``load_runner(pretrained, **settings)`` returns an object with
    ``generate(batch, max_new_tokens, do_sample, temperature) -> list[str]`` where ``batch``
    is a list of ``(video_paths, prompt_text)``; frame sampling and the chat template are
    the runner's (the same as ``stormvl eval``).
    """
    try:
        from stormvl.evaluation import load_runner
    except ImportError as exc:
        raise UserError(f"stormvl.evaluation.load_runner is not available ({exc}); "
                        f"this stormvl build cannot generate yet") from None
    return load_runner(pretrained, **settings)


class StormVL(_Base):
    """A stormvl checkpoint as an lmms-eval "simple" model (video paths + text in, text out).

    Args (``--model_args``): ``pretrained`` (checkpoint dir, or a training run's folder: its
    newest checkpoint, as ``stormvl eval --model`` takes it), ``num_frames`` (uniform frames,
    default 16), ``fps`` (sample by rate instead), ``k`` (latent steps; default from the
    checkpoint), ``batch_size``; ``device`` and others from the harness are passed through.
    """

    is_simple = True

    def __init__(self, pretrained: str | None = None, num_frames: int = 16,
                 fps: float | None = None, k: int | None = None, batch_size: int | str = 1,
                 **kwargs: Any) -> None:
        if not HAVE_LMMS_EVAL:
            raise UserError(_MISSING + _IMPORT_ERROR)
        if not pretrained:
            raise UserError("--model_args needs pretrained=<stormvl checkpoint dir>")
        super().__init__()
        self.batch_size = max(1, int(batch_size))
        settings = {"num_frames": None if fps else int(num_frames), "fps": fps, "k": k,
                    **{key: v for key, v in kwargs.items() if v is not None}}
        self._runner = _load_runner(str(pretrained), settings)

    def generate_until(self, requests) -> list[str]:
        """Answer each request; requests with the same generation settings are batched."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s: s + self.batch_size]
                replies = self._generate([requests[i] for i in chunk])
                for i, reply in zip(chunk, replies, strict=True):
                    out[i] = reply
        return [o or "" for o in out]

    def _generate(self, reqs) -> list[str]:
        gen = dict(reqs[0].args[1])
        batch = []
        for req in reqs:
            context, _, doc_to_visual, doc_id, task, split = req.args[:6]
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
            videos = [str(v) for v in visuals if isinstance(v, str)]
            if len(videos) != len(visuals):
                raise UserError(f"task {task}: stormvl takes video paths only, got "
                                f"{[type(v).__name__ for v in visuals]}")
            batch.append((videos, context))
        replies = self._runner.generate(
            batch, max_new_tokens=int(gen.get("max_new_tokens", 16)),
            do_sample=bool(gen.get("do_sample", False)),
            temperature=float(gen.get("temperature", 0.0) or 0.0))
        until = gen.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        result = []
        for req, reply in zip(reqs, replies, strict=True):
            text = truncate_at(reply, until)
            self.cache_hook.add_partial("generate_until", (req.args[0], req.args[1]), text)
            result.append(text)
        return result

    def loglikelihood(self, requests):
        raise UserError("stormvl answers by generation; loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise UserError("stormvl does not support multi-round tasks")


def truncate_at(text: str, stops: list[str]) -> str:
    """Cut a reply at the first stop string (the harness's ``until``)."""
    cut = len(text)
    for s in stops:
        if s:
            at = text.find(s)
            if at >= 0:
                cut = min(cut, at)
    return text[:cut]
