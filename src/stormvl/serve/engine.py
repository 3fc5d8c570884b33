"""The model side of the server: a request becomes a prepared ``Job`` (in the worker pool:
worker processes holding a weightless copy of the model, ``PrepareSpec``, or threads), and
a batch of jobs becomes answers in one engine call (in the engine process, ``workers.py``).

Both go through the evaluator's ``Runner`` (``stormvl eval`` and ``stormvl answer`` answer
with it): frames planned as training planned them, the method's prompt layout, left-padded
batches whose latent blocks line up, the latent engine's ``generate``. A request's own
settings (K, frames, reply budget) make a shallow copy of the runner; the model, tokenizer
and the tokenizer's lock are shared.

Rows that finish early: the engine decodes a batch as one static batch; a row that has
stopped is fed padding until every row has stopped or the longest budget in the batch is
spent, then the loop ends. A stopped row so costs its share of each later batched step but
never a step of its own; its reply is cut at its stop token and at its own ``max_tokens``.
A row still running past its own ``max_tokens`` keeps being decoded (the engine has one
budget per call) until the batch ends; the extra tokens are dropped.

As ``stormvl answer``: a request without ``max_tokens`` gets the checkpoint's reply budget
when its question carries lettered options, the open-ended budget otherwise; a model that
writes ``rationale + "The answer is X."`` answers "X." with the rationale beside it.
"""

from __future__ import annotations

import copy
import logging
import re
import secrets
from dataclasses import dataclass, replace

import torch

from stormvl.errors import UserError
from stormvl.evaluation.model import EvalSettings, answer_part, load_model
from stormvl.evaluation.runner import Prepared, Runner
from stormvl.integrations.lmms_eval import truncate_at
from stormvl.serve.media import LimitedClips, MediaLimits, Scratch, shown_error, stage
from stormvl.serve.schema import ApiError, ChatRequest, read_messages
from stormvl.tasks.base import EvalItem
from stormvl.training.config import VideoConfig

log = logging.getLogger("stormvl.serve")
# an option line of a multiple-choice question: "A. left", "(B) right", "C) up"
_OPTION_LINE = re.compile(r"^\(?([A-J])[.)]\s+\S")


def is_multiple_choice(text: str) -> bool:
    """Whether a question carries lettered options (from "A" on, one per line), as the text
    ``stormvl answer --option ...`` builds: such a question gets the short reply budget, any
    other the open-ended one, as in ``answer``."""
    letters = [m.group(1) for line in text.splitlines() if (m := _OPTION_LINE.match(line.strip()))]
    return letters[:2] == ["A", "B"]


def split_reply(raw: str, writes_rationale: bool) -> tuple[str, str | None, int]:
    """(content, reasoning, where the content starts in ``raw``).

    A model that writes ``rationale\\nThe answer is X.`` answers "X." (what ``stormvl
    answer`` prints and ``stormvl eval`` scores, so a harness reading the content scores
    what stormvl scores); the text before it is the reasoning (None when there is none).
    """
    content = answer_part(writes_rationale, raw)
    if content == raw:
        return raw, None, 0
    start = raw.rfind(content)
    return content, raw[:start].rstrip(), start


@dataclass
class Job:
    """One request, decoded and tokenised, waiting for its engine call."""

    id: str
    prepared: Prepared
    k: int  # latent steps
    max_tokens: int
    stop: list[str]
    sampling: tuple[float, float] | None  # (temperature, top_p); None = greedy
    seed: int | None

    @property
    def key(self) -> tuple:
        """Jobs with one key can share an engine call (one K and one set of sampling
        settings per call). A seeded sampled request runs alone: the engine draws all rows
        from one generator, so batching it would tie its answer to its batch-mates."""
        if self.sampling is None:
            return (self.k, "greedy")
        if self.seed is not None:
            return ("alone", self.id)
        return (self.k, *self.sampling)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens, video placeholders included, the K latent slots not."""
        return len(self.prepared.encoded.input_ids) - self.k


@dataclass
class Answer:
    """One row of an engine call."""

    text: str  # the message content
    reasoning: str | None  # a rationale-writing model's reasoning (``reasoning_content``)
    raw: str  # the whole reply (cut at a stop string): reasoning + content, as generated
    content_at: int  # where ``text`` starts in ``raw``
    finish_reason: str  # "stop" (stop token or string) | "length"
    token_ids: list[int]  # the reply's tokens (before a stop string cut)
    completion_tokens: int  # decode steps this row used, its stop token included
    timings: dict[str, float]  # the engine call's prefill / rollout / decode seconds
    batch_size: int


@dataclass(frozen=True)
class PrepareSpec:
    """How a preparation worker process rebuilds a ``ServedModel``'s request side: the
    checkpoint without its weights (``load_model(weights=False)``: its tokenizer, video
    settings and shapes), the same run settings and limits. A few picklable fields, so a
    spawned worker starts from the checkpoint folder instead of a copy of the weights, and
    prepares a request with the very code (and so the very tensors) the server would."""

    checkpoint: str
    settings: EvalSettings
    name: str
    limits: MediaLimits
    max_tokens_cap: int

    def build(self) -> ServedModel:
        runner = Runner(load_model(self.checkpoint, weights=False), self.settings)
        return ServedModel(runner, self.name, self.limits, self.max_tokens_cap)


class ServedModel:
    """A loaded checkpoint behind the server, with the limits requests are checked against."""

    def __init__(self, runner: Runner, name: str, limits: MediaLimits, max_tokens_cap: int):
        if runner.model.oracle_frames:
            raise UserError(f"{runner.model.path}: an oracle checkpoint needs each question's "
                            "thought video; it cannot be served")
        if runner.model.prompt.get("layout") == "bare":
            raise UserError(f"{runner.model.path}: trained with data.prompt=bare, it answers "
                            "one fixed question only; it cannot be served")
        self.runner, self.name, self.limits = runner, name, limits
        self.max_tokens_cap = max_tokens_cap
        self.tokenizer = runner.model.backbone.tokenizer
        self.clips = LimitedClips(limits)

    @property
    def spec(self) -> PrepareSpec:
        return PrepareSpec(self.runner.model.path, self.runner.settings, self.name, self.limits,
                           self.max_tokens_cap)

    @property
    def max_latent_steps(self) -> int:
        return self.runner.model.k

    @property
    def max_frames(self) -> int:
        """Frames a request may ask for: the most its checkpoint was trained with."""
        v = self.runner.model.video
        return v.num_frames if v.num_frames is not None else v.max_frames

    def describe(self) -> dict:
        m, v = self.runner.model, self.runner.video
        return {"method": m.method, "backbone": m.backbone.family,
                "latent_steps": self.runner.gen["k"], "max_latent_steps": self.max_latent_steps,
                "num_frames": v.num_frames, "fps": v.fps, "max_frames": self.max_frames,
                "max_tokens": {"multiple_choice": self.default_max_tokens(True),
                               "open_ended": self.default_max_tokens(False)},
                "max_tokens_cap": self.max_tokens_cap}

    # ----- request -> job (worker pool: any process holding this model, weights or not) ---

    def _video(self, req: ChatRequest) -> VideoConfig:
        v = self.runner.video
        if req.num_frames is not None and req.fps is not None:
            raise ApiError(400, "num_frames / fps: give one, not both", "num_frames")
        if req.num_frames is not None:
            if req.num_frames > self.max_frames:
                raise ApiError(400, f"num_frames: {req.num_frames} is above the {self.max_frames} "
                               "frames this checkpoint was trained with", "num_frames")
            v = replace(v, num_frames=req.num_frames, fps=None)
        elif req.fps is not None:
            v = replace(v, num_frames=None, fps=req.fps, max_frames=self.max_frames)
        return replace(v, timeout_s=min(v.timeout_s, self.limits.timeout_s))

    def _settings(self, req: ChatRequest, mc: bool) -> tuple[int, int, tuple[float, float] | None]:
        k = self.max_latent_steps if req.latent_steps is None else req.latent_steps
        if k > self.max_latent_steps:
            raise ApiError(400, f"latent_steps: {k} is above this checkpoint's "
                           f"{self.max_latent_steps} (its trained K)", "latent_steps")
        if None not in (req.max_tokens, req.max_completion_tokens) and \
                req.max_tokens != req.max_completion_tokens:
            raise ApiError(400, "max_tokens / max_completion_tokens: give one", "max_tokens")
        tokens = req.max_tokens or req.max_completion_tokens
        if tokens is None:  # the budget ``stormvl answer`` gives this kind of question
            tokens = min(self.default_max_tokens(mc), self.max_tokens_cap)
        if tokens > self.max_tokens_cap:
            raise ApiError(400, f"max_tokens: {tokens} is above the server's cap of "
                           f"{self.max_tokens_cap} (--max-tokens-cap)", "max_tokens")
        sampling = None if not req.temperature else (req.temperature, req.top_p or 1.0)
        return k, tokens, sampling

    def default_max_tokens(self, multiple_choice: bool) -> int:
        return self.runner.gen["max_new_tokens" if multiple_choice else "free_form_max_new_tokens"]

    def prepare(self, req: ChatRequest, job_id: str) -> Job:
        """Check a request, decode its video and tokenise its prompt (off the event loop).

        Raises:
            ApiError: 400 for anything wrong with the request or its media.
        """
        text, ref = read_messages(req, self.runner.model.backbone.default_system)
        mc = is_multiple_choice(text)
        k, tokens, sampling = self._settings(req, mc)
        runner = copy.copy(self.runner)  # shares the model, tokenizer and encode lock
        runner.video = self._video(req)
        runner.gen = {**runner.gen, "k": k}
        runner.clips = self.clips
        with Scratch() as scratch:
            staged = stage(ref, self.limits, scratch, req.frames_fps)
            item = EvalItem(job_id, "serve", staged.path, text, "", frames_fps=staged.frames_fps,
                            format="mc" if mc else "open_ended")
            try:
                prepared = runner.prepare(item)
            except (UserError, OSError) as exc:  # VideoError, truncated frames, budget
                raise ApiError(400, f"{ref.param}: {shown_error(exc, staged)}", ref.param) from None
        return Job(job_id, prepared, k, tokens, list(req.stop or []), sampling, req.seed)

    # ----- jobs -> answers (the engine process) -----------------------------------------

    def run(self, jobs: list[Job]) -> list[Answer | ApiError]:
        """One engine call for jobs sharing a key; a failing batch is retried row by row, so
        one bad row cannot cost the others their answers."""
        try:
            return self._run(jobs)
        except Exception:
            if len(jobs) > 1:
                log.exception("engine call of %d rows failed; retrying row by row", len(jobs))
                return [self.run([j])[0] for j in jobs]
            log.exception("engine call failed for request %s", jobs[0].id)
            return [ApiError(500, "the engine failed on this request", None, "server_error",
                             "engine_error")]

    def _run(self, jobs: list[Job]) -> list[Answer]:
        first, bb = jobs[0], self.runner.model.backbone
        runner = copy.copy(self.runner)
        if first.sampling is not None:  # the runner draws from its own generator
            seed = first.seed if first.seed is not None else secrets.randbits(63)
            runner._torch_gen = torch.Generator(device=bb.device).manual_seed(seed)
        temperature, top_p = first.sampling or (1.0, 1.0)
        out = runner.run([j.prepared for j in jobs], max_new_tokens=max(j.max_tokens for j in jobs),
                         do_sample=first.sampling is not None, temperature=temperature, top_p=top_p)
        answers = []
        writes = self.runner.model.writes_rationale
        for i, j in enumerate(jobs):
            full, steps = out.token_ids[i], out.n_generated[i]
            ids = full[: j.max_tokens]
            # stopped by its stop token within its own budget (the engine counts that token)
            eos = len(full) < steps <= j.max_tokens
            text = out.texts[i] if len(ids) == len(full) else \
                self.tokenizer.batch_decode([ids], skip_special_tokens=True)[0]
            raw = truncate_at(text, j.stop)
            content, reasoning, at = split_reply(raw, writes)
            answers.append(Answer(content, reasoning, raw, at,
                                  "stop" if eos or len(raw) < len(text) else "length", ids,
                                  min(steps, j.max_tokens), out.timings, len(jobs)))
        return answers
