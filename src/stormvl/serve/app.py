"""The HTTP API (FastAPI): OpenAI's ``/v1/chat/completions`` and ``/v1/models``, plus
``/health`` (alive), ``/ready`` (model loaded, not draining) and ``/metrics`` (Prometheus).

Request path: auth -> schema check (400 naming the field) -> admission (429 when full) ->
a preparation worker process decodes and tokenises (400 for bad media) -> the batcher
groups it with other requests into one engine call, run in the engine process (both in
threads with ``--single-process``; ``workers.py``) -> the reply, as one JSON object or as
server-sent events in OpenAI's chunk format ending with ``[DONE]``. Every failure is an
OpenAI-style error object; nothing a client sends can take the server down or reach
another request.

Streaming note: the engine decodes a whole batch in one call, so a streamed reply's chunks
are sent together when its batch finishes (the format of streaming, not an earlier first
token).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from stormvl.serve.batcher import Batcher
from stormvl.serve.config import ServeConfig
from stormvl.serve.engine import Answer, Job, ServedModel
from stormvl.serve.metrics import Metrics
from stormvl.serve.schema import ApiError, ChatRequest, describe_errors
from stormvl.serve.workers import EngineProcess, EngineThread, Preparers

log = logging.getLogger("stormvl.serve")
ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/health", "/ready", "/metrics")
_KIND = {400: "invalid_request", 401: "auth", 404: "not_found", 405: "bad_method",
         413: "too_large", 429: "queue_full", 499: "disconnected", 503: "unavailable",
         504: "timeout"}


def _too_large(max_body: int) -> str:
    return f"the request body is over {max_body / (1 << 20):g} MB (--max-body-mb)"


def _error(status: int, message: str, kind: str, code: str | None = None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ApiError(status, message, None, kind, code).body(), status, headers)


class _TooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413)


class _Guard:
    """Outermost ASGI layer: the API key check (constant-time; every endpoint but /health),
    the body size limit (a declared Content-Length at once, a chunked body as it arrives:
    FastAPI re-raises the 413 from the body read, and the app's handler formats it), and the
    request counter by endpoint and status."""

    def __init__(self, app: FastAPI, api_key: str | None, max_body: int, metrics: Metrics):
        self.app = self.fastapi = app
        self.metrics, self.max_body = metrics, max_body
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = 500

        async def counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.key is not None and path != "/health" and not self._authorized(scope):
                self.metrics.errors.labels("auth").inc()
                resp = _error(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                              "authentication_error", "invalid_api_key",
                              {"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, counted)
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > self.max_body:
                self.metrics.errors.labels("too_large").inc()
                return await _error(413, _too_large(self.max_body), "invalid_request_error")(
                    scope, receive, counted)
            seen = 0

            async def limited():
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge()
                return message

            await self.app(scope, limited, counted)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False


def build_app(load: Callable[[], ServedModel], cfg: ServeConfig,
              on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The ASGI app. ``load`` builds the model after startup (in the engine process, or in
    a thread with ``cfg.single_process``), then the preparation workers start, so
    ``/health`` answers (and ``/ready`` says 503) while a large checkpoint loads.

    Args:
        load: returns the loaded ``ServedModel``; it must pickle (a module-level function
            or a ``functools.partial`` of one) unless ``cfg.single_process``.
        on_load_error: called with the exception when loading fails (the CLI stops the
            server and exits with it).
    """
    metrics = Metrics()
    max_body = int(cfg.max_body_mb * (1 << 20))
    st = SimpleNamespace(model=None, batcher=None, preparers=None, engine=None, error=None,
                         draining=False, loaded_at=0)

    async def load_model() -> None:
        preparers = engine = None
        try:
            if cfg.single_process:
                served = await asyncio.to_thread(load)
                engine = EngineThread(served)
            else:  # the weights in the engine process, a weightless copy here
                engine = EngineProcess(load)
                served = await asyncio.to_thread((await engine.start()).build)
            preparers = Preparers(served, cfg.workers, cfg.single_process)
            await preparers.start()
        except BaseException as exc:  # noqa: BLE001 - reported, and the CLI exits with it
            for part in (preparers, engine):
                if part is not None:
                    part.close()  # on the loop: the pools are its objects
            st.error = exc
            log.error("loading the model failed: %s", exc)
            if on_load_error is not None:
                on_load_error(exc)
            return
        batcher = Batcher(engine.run, cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_queue,
                          metrics)
        batcher.start()
        st.model, st.batcher, st.preparers, st.engine = served, batcher, preparers, engine
        st.loaded_at = int(time.time())
        log.info("ready: serving %s as %r (%d preparation worker %s)", served.runner.model.path,
                 served.name, cfg.workers,
                 "threads, the model in this process" if cfg.single_process else
                 "processes, the model in its own process")

    @asynccontextmanager
    async def lifespan(_app):
        loading = asyncio.create_task(load_model())
        yield
        st.draining = True
        if not loading.done():
            loading.cancel()
        if st.batcher is not None:
            await st.batcher.close(cfg.request_timeout_s)
        for part in (st.preparers, st.engine):  # after the batcher: in-flight requests done
            if part is not None:
                part.close()  # on the loop: the pools are its objects

    app = FastAPI(title="stormvl", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.serve = st
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def api_error(_req: Request, exc: ApiError):
        metrics.errors.labels(_KIND.get(exc.status, "engine" if exc.status >= 500 else "other")).inc()
        return JSONResponse(exc.body(), exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(req: Request, exc: RequestValidationError):
        return await api_error(req, describe_errors(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(req: Request, exc: HTTPException):
        message = {404: f"{req.url.path}: no such endpoint",
                   405: f"{req.method} {req.url.path}: method not allowed",
                   413: _too_large(max_body)}
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return await api_error(req, ApiError(exc.status_code,
                                             message.get(exc.status_code, str(exc.detail)), None,
                                             kind, None, dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def crashed(_req: Request, exc: Exception):
        log.exception("unexpected error", exc_info=exc)
        metrics.errors.labels("internal").inc()
        return _error(500, "internal server error", "server_error")

    def ready() -> tuple[ServedModel, Batcher]:
        if st.draining:
            raise ApiError(503, "the server is shutting down", None, "unavailable_error",
                           "shutting_down", {"Retry-After": "1"})
        if st.model is None or not st.engine.up:
            why = "failed to load" if st.error else "is still loading" if st.model is None \
                else "is being reloaded (its engine process died)"
            raise ApiError(503, f"the model {why}", None, "unavailable_error", "not_ready",
                           {"Retry-After": "5"})
        return st.model, st.batcher

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def is_ready():
        ready()
        return {"status": "ready", "model": st.model.name}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        served, _ = ready()
        return {"object": "list", "data": [{"id": served.name, "object": "model",
                                            "created": st.loaded_at, "owned_by": "stormvl",
                                            "stormvl": served.describe()}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        served, batcher = ready()
        if req.model != served.name:
            raise ApiError(404, f"model: {req.model!r} is not served here; this server serves "
                           f"{served.name!r} (GET /v1/models)", "model", code="model_not_found")
        t0 = time.monotonic()
        deadline = t0 + cfg.request_timeout_s
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        batcher.admit()
        try:
            job = await _prepare(batcher, req, rid, deadline)
            metrics.load.observe(job.prepared.load_s)
            t_ready = time.monotonic()
            res = await _wait(asyncio.ensure_future(batcher.submit(job)), request, deadline)
        finally:
            batcher.release()
        if isinstance(res, ApiError):
            raise res
        _count(job, res, time.monotonic() - t0)
        extra = {"latency_s": {"queue": round(time.monotonic() - t_ready - sum(res.timings.values()), 6),
                               "load": round(job.prepared.load_s, 6),
                               **{k: round(v, 6) for k, v in res.timings.items()},
                               "total": round(time.monotonic() - t0, 6)},
                 "batch_size": res.batch_size, "latent_steps": job.k,
                 "frame_indices": job.prepared.frame_indices}
        usage = {"prompt_tokens": job.prompt_tokens, "completion_tokens": res.completion_tokens,
                 "total_tokens": job.prompt_tokens + res.completion_tokens,
                 "latent_steps": job.k}
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            chunks = _chunks(served, rid, res, usage if include else None, extra)
            return StreamingResponse(chunks, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        message = {"role": "assistant", "content": res.text}
        if res.reasoning is not None:
            message["reasoning_content"] = res.reasoning
        # JSON types only, so the response skips FastAPI's generic encoder (Python on the
        # event loop, the server's one thread)
        return JSONResponse({"id": rid, "object": "chat.completion", "created": int(time.time()),
                             "model": served.name, "choices": [{
                                 "index": 0, "message": message, "logprobs": None,
                                 "finish_reason": res.finish_reason}],
                             "usage": usage, "stormvl": extra})

    async def _prepare(batcher: Batcher, req: ChatRequest, rid: str, deadline: float) -> Job:
        try:
            return await asyncio.wait_for(st.preparers.prepare(req, rid),
                                          max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise ApiError(504, f"preparing the video took over {cfg.request_timeout_s:g} s "
                           "(--request-timeout-s)", None, "timeout_error", "timeout") from None
        finally:
            batcher.prepared()

    async def _wait(fut: asyncio.Future, request: Request, deadline: float):
        """The job's result; a client that disconnects (or runs out of time) cancels it."""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ApiError(504, f"no answer within {cfg.request_timeout_s:g} s "
                                   "(--request-timeout-s)", None, "timeout_error", "timeout")
                done, _ = await asyncio.wait({fut}, timeout=min(0.25, left))
                if done:
                    return fut.result()
                if await request.is_disconnected():
                    raise ApiError(499, "client disconnected", None, "client_closed")
        finally:
            fut.cancel()  # a no-op once answered; drops a job still waiting for its call

    def _count(job: Job, res: Answer, latency: float) -> None:
        metrics.latency.observe(latency)
        metrics.prompt_tokens.inc(job.prompt_tokens)
        metrics.completion_tokens.inc(res.completion_tokens)
        metrics.latent_steps.inc(job.k)

    return _Guard(app, cfg.api_key, max_body, metrics)


def _chunks(served: ServedModel, rid: str, res: Answer, usage: dict | None, extra: dict):
    """OpenAI's chunk sequence for a finished reply: the role, one delta per token (held
    back while a token ends inside a multi-byte character; a rationale-writing model's
    reasoning as ``reasoning_content`` deltas, then its answer as ``content``), the finish
    reason, optional usage, then ``[DONE]``."""
    created = int(time.time())

    def event(choices: list, **more) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created,
                "model": served.name, "choices": choices, **more}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def delta(d: dict, finish=None) -> list:
        return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]

    raw = res.raw
    spans = [("content", res.content_at, res.content_at + len(res.text))]  # in raw
    if res.reasoning is not None:
        spans.insert(0, ("reasoning_content", 0, len(res.reasoning)))

    def pieces(start: int, end: int):  # raw[start:end] as deltas, field by field
        for name, a, b in spans:
            lo, hi = max(start, a), min(end, b)
            if lo < hi:
                yield event(delta({name: raw[lo:hi]}))

    yield event(delta({"role": "assistant", "content": ""}))
    prefixes = served.tokenizer.batch_decode([res.token_ids[: i + 1] for i in
                                              range(len(res.token_ids))],
                                             skip_special_tokens=True)
    sent = 0
    for p in prefixes:
        p = p[: len(raw)]
        if p.endswith("\ufffd") or not raw.startswith(p) or len(p) <= sent:
            continue
        yield from pieces(sent, len(p))
        sent = len(p)
    yield from pieces(sent, len(raw))
    yield event(delta({}, res.finish_reason), stormvl=extra)
    if usage is not None:
        yield event([], usage=usage)
    yield "data: [DONE]\n\n"
