"""The request schema (OpenAI's chat completions, plus stormvl's extra fields) and the
OpenAI-style error every failure is returned as.

Unknown fields are refused, not ignored: a client sending ``logit_bias`` or ``n = 3`` would
otherwise get an answer made under settings it did not ask for. (``frequency_penalty`` /
``presence_penalty`` 0 and ``logprobs`` false, which some clients always send, change nothing
and are accepted.)
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ApiError(Exception):
    """A request that gets an OpenAI-style error object instead of an answer.

    ``param`` names the offending field (``messages[0].content[1].video_url.url``).
    """

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind, self.code, self.headers = kind, code, headers or {}

    def __reduce__(self):
        # raised in a preparation worker process, it reaches the client through a pickle;
        # Exception's default would rebuild it from the message alone
        return type(self), (self.status, self.message, self.param, self.kind, self.code,
                            self.headers)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Url(_Strict):
    url: str
    detail: str | None = None  # OpenAI's image detail hint; accepted, not used


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: Url


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: Url


Part = Annotated[TextPart | VideoPart | ImagePart, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """``POST /v1/chat/completions``; the extra fields after ``user`` are stormvl's."""

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # newer clients' name for it
    temperature: float | None = Field(None, ge=0, le=2)  # None or 0: greedy
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # sent by some clients at their neutral values; accepted only there
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    # stormvl
    latent_steps: int | None = Field(None, ge=0)  # default: the checkpoint's K
    num_frames: int | None = Field(None, ge=1)  # uniform frames (default: the checkpoint's)
    fps: float | None = Field(None, gt=0)  # or: sample frames at this rate
    frames_fps: float | None = Field(None, gt=0)  # rate an image_url frame list was taken at

    @field_validator("n")
    @classmethod
    def _one(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n = 1 is supported")
        return v

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, v):
        if v not in (None, 0):
            raise ValueError("only 0 is supported (stormvl applies no penalties)")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v):
        if v:
            raise ValueError("logprobs are not returned; send false or leave it out")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("give at most 4 non-empty stop strings")
        return stops

    @field_validator("fps", "frames_fps", "temperature", "top_p")
    @classmethod
    def _finite(cls, v):
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


def param_path(loc: tuple) -> str:
    """pydantic's location tuple -> ``messages[0].content[1].video_url.url``.

    Union branch labels (``str``, ``list[tagged-union[...]]``) and the tag pydantic inserts
    after a tagged-union item's index are not fields, so they are left out.
    """
    out, tagged, skip_tag = "", False, False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            skip_tag = tagged
            continue
        label = str(part)
        if label == "body" and not out:
            continue
        if label == "str" or label.startswith(("list[", "tagged-union[", "function-")):
            tagged = "tagged-union" in label
            continue
        if skip_tag:  # the discriminator value, e.g. 'video_url' before the field video_url
            skip_tag = tagged = False
            continue
        out += ("." if out else "") + label
    return out or "body"


def describe_errors(errors: list[dict]) -> ApiError:
    """pydantic / FastAPI validation errors -> one 400 naming the first offending field.

    For ``content`` (a string or a list of parts) the string branch's complaint is dropped
    when the list branch explains the problem better.
    """
    errs = [e for e in errors if "str" not in e["loc"][-1:]] or errors
    e = errs[0]
    if e["type"] == "json_invalid":
        detail = (e.get("ctx") or {}).get("error", "")
        return ApiError(400, f"body: malformed JSON ({detail})".replace(" ()", ""), "body")
    param = param_path(tuple(e["loc"]))
    msg = re.sub(r"^Value error, ", "", str(e["msg"]))
    if e["type"] == "extra_forbidden":
        msg = "unknown field"
    return ApiError(400, f"{param}: {msg}", param)


class VideoRef(BaseModel):
    """The one video a request names: a ``video_url``, or ``image_url`` frames in order."""

    param: str  # where it sits in the request, for error messages
    url: str | None = None
    frames: list[str] = Field(default_factory=list)


def read_messages(req: ChatRequest, default_system: str | None) -> tuple[str, VideoRef]:
    """The user text and the video of a one-turn chat (an optional system message first).

    A system message is accepted only when it is the checkpoint's own default: the model
    was trained with that one, and stormvl answers through the training layout.

    Raises:
        ApiError: multi-turn chats, a custom system prompt, no video, or two videos.
    """
    msgs = list(req.messages)
    if msgs[0].role == "system":
        system = msgs.pop(0)
        said = system.content if isinstance(system.content, str) else "\n".join(
            p.text for p in system.content if isinstance(p, TextPart))
        if said.strip() != (default_system or "").strip():
            raise ApiError(400, "messages[0]: a custom system prompt is not supported (the "
                           f"checkpoint answers with its training one: {default_system!r})",
                           "messages[0]")
    at = len(req.messages) - len(msgs)
    if len(msgs) != 1 or msgs[0].role != "user":
        raise ApiError(400, "messages: stormvl answers one user message (after an optional "
                       "system message); multi-turn chats are not supported", "messages")
    content = msgs[0].content
    parts = [TextPart(type="text", text=content)] if isinstance(content, str) else content
    texts, video, frames = [], None, VideoRef(param=f"messages[{at}].content")
    for j, p in enumerate(parts):
        where = f"messages[{at}].content[{j}]"
        if isinstance(p, TextPart):
            texts.append(p.text)
        elif isinstance(p, VideoPart):
            if video is not None:
                raise ApiError(400, f"{where}: one video per request (a second video_url)", where)
            video = VideoRef(param=f"{where}.video_url.url", url=p.video_url.url)
        else:
            frames.frames.append(p.image_url.url)
    if video is not None and frames.frames:
        raise ApiError(400, f"messages[{at}].content: give the video as one video_url or as "
                       "image_url frames, not both", f"messages[{at}].content")
    if video is None and not frames.frames:
        raise ApiError(400, f"messages[{at}].content: missing video (add a video_url part, or "
                       "image_url frames)", f"messages[{at}].content")
    return "\n".join(texts), video or frames
