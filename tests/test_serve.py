"""``stormvl serve`` on a tiny checkpoint, loopback only.

References the answers are checked against: ``stormvl answer`` (the CLI, a separate code
path into the runner) and each request answered alone; the frame-list and data-URL inputs
against the same video given as a path. Batching is shown by counting engine calls and by
the batch-size metric; every bad input gets its status and field, and the server answers
afterwards.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from stormvl.cli import main
from stormvl.data.video import decode_frames, write_video
from stormvl.latent import format_question
from stormvl.serve import ServeConfig
from stormvl.serve.app import build_app
from stormvl.serve.server import load_served

QUESTION, OPTIONS = "Where does the square go?", ["left", "right", "up"]
KEY = "test-key-7f3a9c"  # the subprocess server's API key (must never reach its logs)


def save_checkpoint(path: Path, method: str = "latent", k: int = 2) -> Path:
    """A tiny checkpoint through the trainer's own save path (weights + stormvl.json)."""
    from stormvl.backbones import VideoSettings
    from stormvl.backbones.tiny import build_tiny
    from stormvl.training.build import Built, run_meta, save_model
    from stormvl.training.config import MethodConfig, TrainConfig, VideoConfig

    bb = build_tiny("qwen2_5_vl", "tiny", seed=0)
    cfg = TrainConfig(method=MethodConfig(name=method, k=k),
                      video=VideoConfig(num_frames=4, min_pixels=28 * 28, max_pixels=56 * 56,
                                        max_visual_tokens=64))
    bb.video = VideoSettings(min_pixels=cfg.video.min_pixels, max_pixels=cfg.video.max_pixels)
    save_model(Built(bb), path, run_meta(cfg, 0))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tinylatent")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """v0..v5.mp4 (distinct lossless 8-frame clips at 4 fps), a corrupt and an empty file, and
    a symlink that points outside the root."""
    base = tmp_path_factory.mktemp("media")
    root = base / "root"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        write_video(root / f"v{i}.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                    fps=4, lossless=True)
    (root / "junk.mp4").write_bytes(b"this is not a video" * 10)
    (root / "empty.mp4").write_bytes(b"")
    (base / "secret.mp4").write_bytes((root / "v0.mp4").read_bytes())
    (root / "link.mp4").symlink_to(base / "secret.mp4")
    return root


def make_app(ckpt: Path, media: Path, wrap=None, loader=load_served, **settings):
    """An app over the tiny checkpoint; one preparation worker process unless asked
    otherwise (each process start imports torch and transformers: seconds on a busy box).
    Tests of the HTTP layer alone (auth, queue, timeouts) run in one process, where
    ``wrap`` can wrap the model's ``run``."""
    cfg = ServeConfig(media_root=str(media), **{"workers": 1, **settings})
    if wrap is None:  # pickles: loaded in the engine process
        return build_app(functools.partial(loader, str(ckpt), "cpu", cfg), cfg)
    assert cfg.single_process, "wrap needs the model in this process"

    def load():
        served = loader(str(ckpt), "cpu", cfg)
        served.run = wrap(served.run)
        return served

    return build_app(load, cfg)


def wait_ready(client, timeout: float = 60.0, **kw) -> None:
    deadline = time.time() + timeout
    while client.get("/ready", **kw).status_code != 200:
        assert time.time() < deadline, "the model did not load"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def app(ckpt, media):
    return make_app(ckpt, media, workers=2, max_batch=8, max_wait_ms=2000, max_tokens_cap=64,
                    max_input_frames=16, max_body_mb=1.0)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def ask(video: str | None = "v0.mp4", text: str | None = None, parts: list | None = None,
        **extra) -> dict:
    content = parts if parts is not None else [{"type": "video_url", "video_url": {"url": video}}]
    content = content + [{"type": "text", "text": text or format_question(QUESTION, OPTIONS)}]
    return {"model": "tinylatent", "messages": [{"role": "user", "content": content}], **extra}


def reply(r) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def batcher(app):
    return app.fastapi.state.serve.batcher


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


# ----------------------------------------------------------------------------------------


def test_answer_equals_stormvl_answer(client, ckpt, media, capsys):
    assert main(["answer", "--model", str(ckpt), "--video", str(media / "v0.mp4"), "--question",
                 QUESTION, *[a for o in OPTIONS for a in ("--option", o)], "--device", "cpu"]) == 0
    want = capsys.readouterr().out
    r = client.post("/v1/chat/completions", json=ask())
    got = r.json()
    assert reply(r) + "\n" == want
    assert got["object"] == "chat.completion" and got["model"] == "tinylatent"
    u, extra = got["usage"], got["stormvl"]
    assert u["latent_steps"] == 2 == extra["latent_steps"]
    assert 1 <= u["completion_tokens"] <= 16 and u["total_tokens"] == u["prompt_tokens"] + u[
        "completion_tokens"]
    assert set(extra["latency_s"]) == {"queue", "load", "prefill", "rollout", "decode", "total"}
    assert extra["frame_indices"] == [1, 3, 5, 7]  # 4 uniform frames of 8, as training samples
    # the same question through a file:// URL and as an absolute path
    assert reply(client.post("/v1/chat/completions",
                             json=ask(f"file://{media / 'v0.mp4'}"))) + "\n" == want
    assert reply(client.post("/v1/chat/completions", json=ask(str(media / "v0.mp4")))) + "\n" == want


def test_models_health_ready_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    m = client.get("/v1/models").json()["data"][0]
    assert m["id"] == "tinylatent" and m["stormvl"]["max_latent_steps"] == 2
    text = client.get("/metrics").text
    for series in ("stormvl_requests_total", "stormvl_request_errors_total", "stormvl_queue_depth",
                   "stormvl_batch_size_bucket", "stormvl_phase_seconds_bucket",
                   "stormvl_request_latency_seconds_bucket", "stormvl_prompt_tokens_total",
                   "stormvl_completion_tokens_total", "stormvl_latent_steps_total"):
        assert series in text, series
    assert 'phase="rollout"' in text and 'endpoint="/v1/chat/completions"' in text


def test_frames_and_data_url_equal_the_video_path(client, media):
    want = client.post("/v1/chat/completions", json=ask()).json()
    frames, _ = decode_frames(media / "v0.mp4")  # all 8 frames, lossless: the exact pixels
    urls = []
    for f in frames:
        buf = io.BytesIO()
        from PIL import Image

        Image.fromarray(f).save(buf, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    got = client.post("/v1/chat/completions", json=ask(parts=parts, frames_fps=4.0)).json()
    assert got["choices"] == want["choices"]
    assert got["stormvl"]["frame_indices"] == want["stormvl"]["frame_indices"]
    assert got["usage"] == want["usage"]
    data = "data:video/mp4;base64," + base64.b64encode((media / "v0.mp4").read_bytes()).decode()
    assert client.post("/v1/chat/completions", json=ask(data)).json()["choices"] == want["choices"]


def test_media_is_written_only_when_sent_and_then_removed(media, tmp_path, monkeypatch):
    import tempfile

    from stormvl.serve.media import MediaLimits, Scratch, stage
    from stormvl.serve.schema import VideoRef

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    limits = MediaLimits(root=media)
    with Scratch() as scratch:  # a local file is read where it is
        staged = stage(VideoRef(param="messages[0]", url="v0.mp4"), limits, scratch, None)
        assert staged.path == (media / "v0.mp4").resolve() and not list(tmp_path.iterdir())
    data = "data:video/mp4;base64," + base64.b64encode((media / "v0.mp4").read_bytes()).decode()
    with Scratch() as scratch:
        staged = stage(VideoRef(param="messages[0]", url=data), limits, scratch, None)
        assert staged.path.parent.parent == tmp_path and staged.path.read_bytes()[:4]
    assert not list(tmp_path.iterdir())  # removed with its request


def test_streaming_is_openai_chunks_ending_with_done(client):
    plain = client.post("/v1/chat/completions", json=ask("v1.mp4", max_tokens=12)).json()
    r = client.post("/v1/chat/completions", json=ask("v1.mp4", max_tokens=12, stream=True,
                                                      stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e[len("data: "):] for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == plain["choices"][0]["finish_reason"] and set(finish[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_concurrent_requests_batch_and_match_single_answers(client, app):
    """Six good requests (different videos and budgets) and a malformed one at once: fewer
    engine calls than requests, each answer equal to the same request sent alone."""
    bodies = [ask(f"v{i}.mp4", max_tokens=4 + 2 * i) for i in range(6)]
    alone = [client.post("/v1/chat/completions", json=b).json() for b in bodies]
    assert all(a["stormvl"]["batch_size"] == 1 for a in alone)
    bad = ask("../secret.mp4")
    calls0 = batcher(app).calls
    m0 = client.get("/metrics").text
    out: dict[int, object] = {}

    def send(i, body):
        out[i] = client.post("/v1/chat/completions", json=body)

    threads = [threading.Thread(target=send, args=(i, b)) for i, b in enumerate([*bodies, bad])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = batcher(app).calls - calls0
    assert calls < len(bodies)
    m1 = client.get("/metrics").text
    sizes = metric(m1, "stormvl_batch_size_sum") - metric(m0, "stormvl_batch_size_sum")
    assert sizes == len(bodies) and sizes / calls > 1  # mean batch size of these calls > 1
    for i, a in enumerate(alone):
        got = out[i].json()
        assert got["choices"] == a["choices"], i  # greedy: batched == alone, token for token
        assert got["usage"] == a["usage"]
        assert got["usage"]["completion_tokens"] <= 4 + 2 * i
    assert max(out[i].json()["stormvl"]["batch_size"] for i in range(6)) > 1
    assert out[6].status_code == 400 and "outside --media-root" in out[6].json()["error"]["message"]


def test_seeded_sampling_is_reproducible_alone_or_among_others(client):
    body = ask("v2.mp4", temperature=1.0, top_p=0.9, seed=11, max_tokens=10)
    first = reply(client.post("/v1/chat/completions", json=body))
    out = {}

    def send(i, b):
        out[i] = client.post("/v1/chat/completions", json=b)

    others = [ask(f"v{i}.mp4", max_tokens=6) for i in (3, 4)]
    threads = [threading.Thread(target=send, args=(i, b)) for i, b in enumerate([body, *others])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reply(out[0]) == first and out[0].json()["stormvl"]["batch_size"] == 1
    other_seed = reply(client.post("/v1/chat/completions", json={**body, "seed": 12}))
    greedy = reply(client.post("/v1/chat/completions", json={**body, "temperature": 0}))
    assert other_seed != first or greedy != first  # sampling did sample


def test_engine_failure_in_one_row_leaves_the_others(ckpt, media):
    """A job that breaks the engine call (its placeholders no longer match its video) is
    answered with a 500 error; its batch-mates still get their single-request answers."""
    import dataclasses

    served = load_served(str(ckpt), "cpu", ServeConfig(media_root=str(media)))
    good = [served.prepare(_request(ask(f"v{i}.mp4", max_tokens=5)), f"g{i}") for i in (0, 1)]
    broken = served.prepare(_request(ask("v2.mp4", max_tokens=5)), "bad")
    enc = broken.prepared.encoded
    broken.prepared.encoded = dataclasses.replace(enc, videos=[])  # features without a video
    alone = [served.run([j])[0] for j in good]
    got = served.run([good[0], broken, good[1]])
    assert [g.text for g in (got[0], got[2])] == [a.text for a in alone]
    assert got[1].status == 500 and got[1].code == "engine_error"


def _request(body):
    from stormvl.serve.schema import ChatRequest

    return ChatRequest.model_validate(body)


def _frame_parts(media: Path) -> list[dict]:
    """v0.mp4's 8 frames as PNG data URLs (lossless: the exact pixels)."""
    from PIL import Image

    parts = []
    for f in decode_frames(media / "v0.mp4")[0]:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        parts.append({"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}})
    return parts


def _bits(t) -> tuple:
    return t.dtype, tuple(t.shape), t.contiguous().numpy().tobytes()


def test_a_worker_process_prepares_the_in_process_job(app, client, media):
    """The default preparation runs in spawned worker processes holding the checkpoint
    without its weights; their Job equals the server process's own, bit for bit, for a
    video file and for a frame list."""
    import pickle

    from stormvl.serve.schema import ApiError

    served, pre = app.fastapi.state.serve.model, app.fastapi.state.serve.preparers
    assert not pre.threads and client.portal.call(pre.call, os.getpid) != os.getpid()
    for body in (ask("v0.mp4", num_frames=2, stop=["x"]),
                 ask(parts=_frame_parts(media), frames_fps=4.0, max_tokens=7)):
        req = _request(body)
        here, there = served.prepare(req, "j"), client.portal.call(pre.prepare, req, "j")
        assert (here.id, here.k, here.max_tokens, here.stop, here.sampling, here.seed) == (
            there.id, there.k, there.max_tokens, there.stop, there.sampling, there.seed)
        a, b = here.prepared, there.prepared
        assert (a.frame_indices, a.thought_indices) == (b.frame_indices, b.thought_indices)
        assert (a.item.question, a.item.format, a.item.frames_fps) == (
            b.item.question, b.item.format, b.item.frames_fps)
        ea, eb = a.encoded, b.encoded
        assert (ea.input_ids, ea.mm_token_type_ids, ea.labels, ea.k, ea.split) == (
            eb.input_ids, eb.mm_token_type_ids, eb.labels, eb.k, eb.split)
        assert _bits(ea.position_ids) == _bits(eb.position_ids)
        assert len(ea.videos) == len(eb.videos) == 1
        va, vb = ea.videos[0], eb.videos[0]
        assert _bits(va.pixel_values) == _bits(vb.pixel_values)
        assert _bits(va.grid_thw) == _bits(vb.grid_thw)
        assert va.timestamps.tobytes() == vb.timestamps.tobytes()
        assert (va.grid_interval, va.n_tokens, va.key) == (vb.grid_interval, vb.n_tokens, vb.key)
    err = pickle.loads(pickle.dumps(ApiError(400, "m", "p", headers={"a": "b"})))
    assert (err.status, err.message, err.param, err.kind, err.headers) == (
        400, "m", "p", "invalid_request_error", {"a": "b"})


def test_a_job_travels_without_torch_load(app, client, monkeypatch):
    """A worker's Job pickles its tensors as numpy arrays: read back without torch.load
    (slow Python on the event loop), the same dtypes and bytes."""
    import pickle

    import torch.storage

    from stormvl.serve.procs import dumps

    served = app.fastapi.state.serve.model
    job = served.prepare(_request(ask("v0.mp4")), "j")
    sent, plain = dumps(job), pickle.dumps(job)
    monkeypatch.setattr(torch.storage, "_load_from_bytes",
                        lambda *a: pytest.fail("read back through torch.load"))
    back = pickle.loads(sent)
    for a, b in ((job.prepared.encoded.position_ids, back.prepared.encoded.position_ids),
                 (job.prepared.encoded.videos[0].pixel_values,
                  back.prepared.encoded.videos[0].pixel_values)):
        assert a.dtype == b.dtype and _bits(a) == _bits(b)
    with pytest.raises(pytest.fail.Exception):  # the plain pickle does go through it
        pickle.loads(plain)


def test_start_returns_once_every_worker_has_its_model(app):
    """Ready means every worker process built its copy (one that is still importing would
    spend its start-up on the first requests), not the first one up."""
    import asyncio

    from stormvl.serve.workers import Preparers

    async def start():
        pre = Preparers(app.fastapi.state.serve.model, 2)
        try:
            await pre.start()
            return pre.ready_pids, {c.process.pid for c in pre._pool.children}
        finally:
            pre.close()

    ready, spawned = asyncio.run(start())
    assert ready == spawned and len(ready) == 2


def _alive(pid: int) -> bool:
    try:  # a zombie has exited (its parent has not reaped it yet)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> set[int]:
    """A process's live child processes (Linux /proc)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out |= {int(c) for c in task.read_text().split()}
    return {c for c in out if _alive(c)}


def test_a_dead_worker_costs_a_503_not_the_server(ckpt, media):
    """A worker killed while it prepares a request gets that request a 503; the next
    request is answered by a new worker; on exit no child process is left."""
    from stormvl.serve.schema import ApiError

    before = _children(os.getpid())
    app = make_app(ckpt, media)  # one worker process, the engine process
    with TestClient(app) as c:
        wait_ready(c)
        pre = app.fastapi.state.serve.preparers
        pid = c.portal.call(pre.call, os.getpid)
        with pytest.raises(ApiError) as died:  # SIGKILL from inside its own call
            c.portal.call(pre.call, os.kill, pid, signal.SIGKILL)
        assert (died.value.status, died.value.code) == (503, "worker_died")
        assert died.value.headers == {"Retry-After": "1"}
        assert reply(c.post("/v1/chat/completions", json=ask(max_tokens=2)))
        assert pre.restarts == 1 and c.portal.call(pre.call, os.getpid) != pid
        children = _children(os.getpid()) - before
        assert pid not in children and len(children) == 2  # a worker, the engine
    assert not children & _children(os.getpid())


def load_dying(checkpoint: str, device: str, cfg: ServeConfig):
    """The served model, whose process dies (SIGKILL) in an engine call holding a request
    with max_tokens = 13 (runs in the engine process: this module is imported there)."""
    served = load_served(checkpoint, device, cfg)
    run = served.run

    def dying(jobs):
        if any(j.max_tokens == 13 for j in jobs):
            os.kill(os.getpid(), signal.SIGKILL)
        return run(jobs)

    served.run = dying
    return served


def test_a_dead_engine_process_costs_its_batch_a_503_then_is_replaced(client, ckpt, media):
    """The engine process dies inside an engine call: every request of that call gets 503
    ``engine_died``; /ready says 503 while a new engine process loads the model, then the
    server answers as before."""
    want = [reply(client.post("/v1/chat/completions", json=ask(f"v{i}.mp4", max_tokens=5)))
            for i in (1, 2)]
    app = make_app(ckpt, media, loader=load_dying, max_wait_ms=2000, max_batch=2)
    with TestClient(app) as c:
        wait_ready(c)
        engine = app.fastapi.state.serve.engine
        pid = engine._pool.children[0].process.pid
        out = {}

        def send(i, tokens):
            out[i] = c.post("/v1/chat/completions", json=ask(f"v{i}.mp4", max_tokens=tokens))

        threads = [threading.Thread(target=send, args=a) for a in ((1, 13), (2, 5))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in out.values():  # batched together, both lost with the process
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_died", r.text
            assert r.headers["retry-after"] == "1"
        assert c.get("/ready").status_code == 503  # the new one is still loading
        wait_ready(c)
        got = [reply(c.post("/v1/chat/completions", json=ask(f"v{i}.mp4", max_tokens=5)))
               for i in (1, 2)]
        assert got == want and engine.restarts == 1
        assert engine._pool.children[0].process.pid != pid


def test_single_process_answers_as_the_processes(client, ckpt, media):
    want = reply(client.post("/v1/chat/completions", json=ask("v3.mp4")))
    before = _children(os.getpid())
    app = make_app(ckpt, media, single_process=True)
    with TestClient(app) as c:
        wait_ready(c)
        assert app.fastapi.state.serve.preparers.threads
        assert reply(c.post("/v1/chat/completions", json=ask("v3.mp4"))) == want
        assert _children(os.getpid()) <= before


BAD = [  # (body or raw bytes, status, the error's param, words in its message)
    (b'{"model": "tinylatent", "messages": [', 400, "body", "malformed JSON"),
    (ask(parts=[{"type": "audio_url", "audio_url": {"url": "x"}}]), 400,
     "messages[0].content[0]", "does not match any of the expected tags"),
    (ask(parts=[]), 400, "messages[0].content", "missing video"),
    (ask("junk.mp4"), 400, "messages[0].content[0].video_url.url", "cannot open video"),
    (ask("empty.mp4"), 400, "messages[0].content[0].video_url.url", "empty"),
    (ask("../secret.mp4"), 400, "messages[0].content[0].video_url.url", "outside --media-root"),
    (ask("link.mp4"), 400, "messages[0].content[0].video_url.url", "outside --media-root"),
    (ask("/etc/passwd"), 400, "messages[0].content[0].video_url.url", "outside --media-root"),
    (ask("nope.mp4"), 400, "messages[0].content[0].video_url.url", "file not found"),
    (ask("http://127.0.0.1:9/v.mp4"), 400, "messages[0].content[0].video_url.url",
     "remote URLs are off"),
    (ask("data:video/mp4;base64,@@@"), 400, "messages[0].content[0].video_url.url",
     "not valid base64"),
    (ask("data:video/mp4;base64," + base64.b64encode(b"garbage" * 20).decode()), 400,
     "messages[0].content[0].video_url.url", "the data URL's video: cannot open video"),
    (ask(latent_steps=3), 400, "latent_steps", "above this checkpoint's 2"),
    (ask(num_frames=5), 400, "num_frames", "above the 4 frames"),
    (ask(parts=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}] * 17),
     400, "messages[0].content", "17 image_url frames"),
    (ask(parts=[{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}}]), 400,
     "messages[0].content: frame 0 (image_url)", "not a decodable PNG or JPEG"),
    (ask(max_tokens=65), 400, "max_tokens", "above the server's cap of 64"),
    (ask(n=2), 400, "n", "only n = 1"),
    (ask(logit_bias={"1": 5}), 400, "logit_bias", "unknown field"),
    (ask(temperature=3), 400, "temperature", "less than or equal to 2"),
    (ask(frequency_penalty=0.5), 400, "frequency_penalty", "only 0 is supported"),
    (ask(logprobs=True), 400, "logprobs", "logprobs are not returned"),
    ({**ask(), "model": "gpt-4o"}, 404, "model", "not served here"),
    ({**ask(), "messages": [{"role": "system", "content": "Talk like a pirate."},
                            *ask()["messages"]]}, 400, "messages[0]", "custom system prompt"),
    ({**ask(), "messages": [*ask()["messages"], {"role": "assistant", "content": "A"},
                            *ask()["messages"]]}, 400, "messages", "multi-turn"),
    (json.dumps(ask(text="x" * (1 << 20))).encode(), 413, None, "over 1 MB"),
]


@pytest.mark.parametrize("body,status,param,words", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_gets_its_status_and_field(client, body, status, param, words):
    if isinstance(body, bytes):
        r = client.post("/v1/chat/completions", content=body,
                        headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err
    assert err["type"] == "invalid_request_error"
    assert "stormvl-serve-" not in err["message"]  # never a server-side temp path
    assert reply(client.post("/v1/chat/completions", json=ask(max_tokens=2)))  # still answers


def test_chunked_body_over_the_limit_gets_413(client):
    chunks = (b" " * (1 << 16) for _ in range(20))  # 1.25 MB, no Content-Length
    r = client.post("/v1/chat/completions", content=chunks,
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 1 MB" in r.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json=ask(n=2)).status_code == 400
    text = client.get("/metrics").text
    assert metric(text, 'stormvl_request_errors_total{kind="too_large"}') >= 1
    assert metric(text, 'stormvl_request_errors_total{kind="invalid_request"}') >= 1
    assert reply(client.post("/v1/chat/completions", json=ask(max_tokens=2)))


def test_duration_and_pixel_limits(ckpt, media, tmp_path):
    from PIL import Image

    root = tmp_path / "m"
    root.mkdir()
    (root / "long.mp4").write_bytes((media / "v0.mp4").read_bytes())  # 2 s
    write_video(root / "short.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=4)  # 1 s
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="PNG")
    frame = {"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}
    with TestClient(make_app(ckpt, root, max_video_s=1.5, max_input_pixels=1000)) as c:
        wait_ready(c)
        for body, words in ((ask("long.mp4"), "the video is 2.0 s long; the server allows at most 1.5 s"),
                            (ask("short.mp4"), "32x32 pixels; the server allows at most 1000"),
                            (ask(parts=[frame]), "32x32 pixels; the server allows at most 1000")):
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
            assert str(root) not in r.json()["error"]["message"]


def test_local_paths_need_a_media_root():
    from stormvl.serve.media import local_path
    from stormvl.serve.schema import ApiError

    with pytest.raises(ApiError, match="local paths are off"):
        local_path("/etc/passwd", None, "url")


def test_remote_video_when_fetching_is_on(ckpt, media, client):
    """With --allow-remote-media an http URL (here a loopback file server) answers as the
    same file given as a path."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(media))
    handler.log_message = lambda *a: None
    files = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{files.server_address[1]}"
        want = reply(client.post("/v1/chat/completions", json=ask("v3.mp4")))
        with TestClient(make_app(ckpt, media, allow_remote_media=True)) as c:
            wait_ready(c)
            assert reply(c.post("/v1/chat/completions", json=ask(f"{url}/v3.mp4"))) == want
            r = c.post("/v1/chat/completions", json=ask(f"{url}/missing.mp4"))
            assert r.status_code == 400 and "HTTP 404" in r.json()["error"]["message"]
    finally:
        files.shutdown()


def test_remote_fetch_has_a_deadline_on_the_whole_download(tmp_path):
    """A server that trickles bytes (each read well within the read timeout) is cut off
    by the deadline on the whole download."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from stormvl.serve.media import MediaLimits, _fetch
    from stormvl.serve.schema import ApiError

    class Trickle(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"x" * 25)
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client gave up
                pass

        def log_message(self, *a):
            pass

    files = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(ApiError, match=r"took over 0.5 s \(--decode-timeout-s\)"):
            _fetch(f"http://127.0.0.1:{files.server_address[1]}/v.mp4",
                   MediaLimits(allow_remote=True, timeout_s=0.5), "url", tmp_path / "v")
        assert time.monotonic() - t0 < 3  # not the 4 s the whole trickle takes
    finally:
        files.shutdown()


def test_a_default_system_prompt_is_accepted(client):
    sys_msg = {"role": "system", "content": "You are a helpful assistant."}
    body = {**ask(), "messages": [sys_msg, *ask()["messages"]]}
    assert reply(client.post("/v1/chat/completions", json=body)) == reply(
        client.post("/v1/chat/completions", json=ask()))


def test_neutral_penalties_are_accepted(client):
    body = ask(frequency_penalty=0, presence_penalty=0.0, logprobs=False)
    assert reply(client.post("/v1/chat/completions", json=body)) == reply(
        client.post("/v1/chat/completions", json=ask()))


def test_multiple_choice_is_told_from_open_ended():
    from stormvl.serve.engine import is_multiple_choice

    assert is_multiple_choice(format_question(QUESTION, OPTIONS))
    assert is_multiple_choice("Which one?\n(A) a cat\n(B) a dog\nAnswer with the letter.")
    assert not is_multiple_choice(QUESTION)
    assert not is_multiple_choice("Name the shape.\nA. is not an option list on its own")
    assert not is_multiple_choice("Options:\nB. two\nC. three")  # not from A


def test_default_budget_follows_the_question_kind(app, client):
    """Without max_tokens a multiple-choice question gets the checkpoint's reply budget, an
    open-ended one the open-ended budget (here capped by --max-tokens-cap 64)."""
    from stormvl.serve.schema import ChatRequest

    served = app.fastapi.state.serve.model
    budgets = served.describe()["max_tokens"]
    assert budgets == {"multiple_choice": 16, "open_ended": 256}
    mc = served.prepare(ChatRequest.model_validate(ask()), "mc")
    free = served.prepare(ChatRequest.model_validate(ask(text=QUESTION)), "free")
    assert (mc.max_tokens, free.max_tokens) == (16, 64)
    assert free.prepared.item.format == "open_ended" and mc.prepared.item.format == "mc"


RATIONALE = "The square starts at the middle and then slides over to the left.\nThe answer is A."


def _rationale_replies(run):
    """Wrap the engine so that every row replies RATIONALE, as a rationale-writing checkpoint
    (textcot) would; the reply's tokens are the tokenizer's own encoding of it."""
    import dataclasses

    from stormvl.serve.engine import split_reply

    ids = run.__self__.tokenizer(RATIONALE, add_special_tokens=False)["input_ids"]
    content, reasoning, at = split_reply(RATIONALE, True)

    def fake(jobs):
        return [dataclasses.replace(a, text=content, reasoning=reasoning, raw=RATIONALE,
                                    content_at=at, token_ids=ids) for a in run(jobs)]
    return fake


def test_rationale_replies_answer_with_the_answer_and_reason_beside_it(ckpt, media):
    """The message content is what ``stormvl answer`` prints for such a reply (the part after
    "The answer is"), the rationale goes to ``reasoning_content``; streamed, the deltas of
    each field join to the same two strings."""
    from stormvl.evaluation.model import answer_part
    from stormvl.serve.engine import split_reply

    assert split_reply("B", True) == ("B", None, 0)  # nothing to split
    assert split_reply(RATIONALE, False) == (RATIONALE, None, 0)  # a model without rationale
    with TestClient(make_app(ckpt, media, wrap=_rationale_replies, single_process=True)) as c:
        wait_ready(c)
        msg = c.post("/v1/chat/completions", json=ask()).json()["choices"][0]["message"]
        assert msg["content"] == answer_part(True, RATIONALE) == "A."
        assert msg["reasoning_content"] == RATIONALE[: RATIONALE.rindex("A.")].rstrip()
        r = c.post("/v1/chat/completions", json=ask(stream=True))
        chunks = [json.loads(e[len("data: "):]) for e in r.text.split("\n\n")
                  if e and e != "data: [DONE]"]
        deltas = [ch["choices"][0]["delta"] for ch in chunks if ch["choices"]]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == msg["reasoning_content"]
        assert "".join(d.get("content", "") for d in deltas) == "A."
        assert sum("reasoning_content" in d for d in deltas) > 3  # token by token
        fields = [k for d in deltas for k in ("reasoning_content", "content") if d.get(k)]
        assert fields == sorted(fields, key=lambda k: k == "content")  # reasoning first


def test_api_key_guards_everything_but_health(ckpt, media):
    app = make_app(ckpt, media, api_key="s3cret", single_process=True)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        ok = {"Authorization": "Bearer s3cret"}
        wait_ready(c, headers=ok)
        for path in ("/ready", "/v1/models", "/metrics"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get(path, headers=ok).status_code == 200
        r = c.post("/v1/chat/completions", json=ask())
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
        assert reply(c.post("/v1/chat/completions", json=ask(), headers=ok))
        assert "s3cret" not in c.get("/metrics", headers=ok).text


def _gate(event: threading.Event):
    def wrap(run):
        def gated(jobs):
            event.wait(60)
            return run(jobs)
        return gated
    return wrap


def _until(cond, timeout=30.0):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_queue_full_gets_429_with_retry_after(ckpt, media):
    gate = threading.Event()
    app = make_app(ckpt, media, wrap=_gate(gate), max_queue=2, max_wait_ms=0, single_process=True)
    with TestClient(app) as c:
        wait_ready(c)
        out = []
        threads = [threading.Thread(target=lambda: out.append(
            c.post("/v1/chat/completions", json=ask(max_tokens=3)))) for _ in range(2)]
        for t in threads:
            t.start()
        _until(lambda: batcher(app).admitted == 2)
        r = c.post("/v1/chat/completions", json=ask(max_tokens=3))
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        gate.set()
        for t in threads:
            t.join()
        assert [o.status_code for o in out] == [200, 200]
        assert c.post("/v1/chat/completions", json=ask(max_tokens=3)).status_code == 200
        assert 'stormvl_request_errors_total{kind="queue_full"} 1.0' in c.get("/metrics").text


def test_request_timeout_gets_504_and_frees_its_slot(ckpt, media):
    gate = threading.Event()
    app = make_app(ckpt, media, wrap=_gate(gate), request_timeout_s=0.5, max_wait_ms=0,
                   single_process=True)
    with TestClient(app) as c:
        wait_ready(c)
        r = c.post("/v1/chat/completions", json=ask(max_tokens=3))
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert batcher(app).admitted == 0
        gate.set()
        assert c.post("/v1/chat/completions", json=ask(max_tokens=3)).status_code == 200


def test_disconnected_client_frees_its_slot(ckpt, media):
    """Over a real socket: a queued request whose client goes away is dropped (never runs)
    and its slot is freed while the engine is still busy."""
    import httpx
    import uvicorn

    gate = threading.Event()
    app = make_app(ckpt, media, wrap=_gate(gate), max_queue=4, max_wait_ms=0,
                   single_process=True)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: _get(f"{url}/ready") == 200)
        first = {}
        t = threading.Thread(target=lambda: first.setdefault("r", httpx.post(
            f"{url}/v1/chat/completions", json=ask(max_tokens=3), timeout=60)))
        t.start()
        _until(lambda: batcher(app).running == 1)  # the engine holds the first request
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=ask("v1.mp4", max_tokens=3), timeout=1.0)
        _until(lambda: batcher(app).admitted == 1)  # freed while the engine is still busy
        gate.set()
        t.join()
        assert first["r"].status_code == 200
        time.sleep(0.2)
        assert batcher(app).calls == 1  # the dropped request never ran
    finally:
        gate.set()
        server.should_exit = True
        thread.join(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, **kw) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=5, **kw).status_code
    except httpx.HTTPError:
        return 0


# ----- the CLI: a live server, the official openai client, SIGTERM ----------------------


def test_cli_refuses_bad_flags_and_checkpoints(tmp_path, ckpt, capsys):
    assert main(["serve", str(ckpt), "--max-batch", "0", "--max-wait-ms", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--max-batch 0: must be >= 1" in err and "--max-wait-ms -1.0: must be >= 0" in err
    assert main(["serve", str(tmp_path / "nope"), "--port", "0", "--device", "cpu"]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def live(ckpt, media, tmp_path_factory):
    """``stormvl serve`` in its own process, the key in the environment."""
    port = _free_port()
    log = tmp_path_factory.mktemp("live") / "server.log"
    env = {**os.environ, "STORMVL_API_KEY": KEY, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "stormvl", "serve", str(ckpt), "--port",
                                 str(port), "--device", "cpu", "--media-root", str(media),
                                 "--max-wait-ms", "50"], env=env, stdout=f, stderr=f)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while _get(f"{url}/ready", headers={"Authorization": f"Bearer {KEY}"}) != 200:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_openai_client_against_live_server(live, ckpt, media, capsys):
    openai = pytest.importorskip("openai")
    _, url, _ = live
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == ["tinylatent"]
    messages = ask()["messages"]
    done = client.chat.completions.create(model="tinylatent", messages=messages)
    assert main(["answer", "--model", str(ckpt), "--video", str(media / "v0.mp4"), "--question",
                 QUESTION, *[a for o in OPTIONS for a in ("--option", o)], "--device", "cpu"]) == 0
    assert done.choices[0].message.content + "\n" == capsys.readouterr().out
    assert done.usage.latent_steps == 2 and done.stormvl["latent_steps"] == 2
    # an open-ended question (no options): the open-ended reply budget, as in ``answer``
    assert main(["answer", "--model", str(ckpt), "--video", str(media / "v0.mp4"), "--question",
                 QUESTION, "--device", "cpu"]) == 0
    free = client.chat.completions.create(model="tinylatent",
                                          messages=ask(text=QUESTION)["messages"])
    assert free.choices[0].message.content + "\n" == capsys.readouterr().out
    assert free.usage.completion_tokens > 16  # past the multiple-choice budget
    stream = client.chat.completions.create(model="tinylatent", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        done.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="outside --media-root"):
        client.chat.completions.create(model="tinylatent", messages=ask("../secret.mp4")["messages"])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong").models.list()


def test_lmms_eval_openai_compatible_model(live, media):
    """lmms-eval's own OpenAI-compatible model (``--model openai``, before 0.7
    ``openai_compatible``) against the server, where lmms-eval is installed (it also runs
    from the unzipped lmms_eval-0.7.3 wheel on PYTHONPATH, with its pure-Python imports
    loguru, python-dotenv, pytz, evaluate, datasets, dill, multiprocess, pandas, xxhash)."""
    import importlib

    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance
    from PIL import Image

    try:
        mod = importlib.import_module("lmms_eval.models.simple.openai")  # lmms-eval >= 0.7
    except ImportError:
        mod = importlib.import_module("lmms_eval.models.simple.openai_compatible")
    OpenAICompatible = mod.OpenAICompatible

    _, url, _ = live
    os.environ.update(OPENAI_API_BASE=f"{url}/v1", OPENAI_API_KEY=KEY)
    frames = [Image.fromarray(f) for f in decode_frames(media / "v0.mp4")[0]]
    model = OpenAICompatible(model_version="tinylatent", max_frames_num=8)
    model.task_dict = {"t": {"test": {0: {"frames": frames}}}}
    prompt = format_question(QUESTION, OPTIONS)
    req = Instance("generate_until", (prompt, {"max_new_tokens": 16, "temperature": 0},
                                      lambda doc: doc["frames"], 0, "t", "test"), 0,
                   {"task": "t", "doc_id": 0, "repeats": 1})
    got = [getattr(g, "text", g) for g in model.generate_until([req])]  # 0.7: GenerationResult
    parts = []
    for f in frames:
        buf = io.BytesIO()
        f.save(buf, format="PNG")
        parts.append({"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}})
    import httpx

    want = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json=ask(parts=parts, max_tokens=16), timeout=60).json()
    assert got == [want["choices"][0]["message"]["content"]]


def test_sigterm_finishes_in_flight_requests_and_exits_cleanly(live):
    import httpx

    proc, url, log = live
    auth = {"Authorization": f"Bearer {KEY}"}
    out = {}

    def send(i):
        out[i] = httpx.post(f"{url}/v1/chat/completions", headers=auth,
                            json=ask(f"v{i}.mp4", max_tokens=64), timeout=60)

    children = _children(proc.pid)  # two preparation workers, the engine, a resource tracker
    assert len(children) >= 3
    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    _until(lambda: metric(httpx.get(f"{url}/metrics", headers=auth).text,
                          "stormvl_queue_depth") + metric(httpx.get(
                              f"{url}/metrics", headers=auth).text,
                              "stormvl_running_requests") >= 1, timeout=60)
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert proc.wait(60) == 0
    _until(lambda: not any(_alive(c) for c in children), timeout=10)
    assert all(o.status_code in (200, 503) for o in out.values()), [o.text for o in out.values()]
    assert any(o.status_code == 200 for o in out.values())
    text = log.read_text()
    assert "Traceback" not in text and KEY not in text
