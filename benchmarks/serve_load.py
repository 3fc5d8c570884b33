"""Load on ``stormvl serve``, measured side by side in one run on loopback.

A server process (the app ``stormvl serve`` runs, on a random-init storm checkpoint with
K = 8, saved through the trainer's save path) takes a fixed number of requests from 1, 4 and
16 concurrent clients (asyncio, one keep-alive connection each); this process prints throughput and p50 / p95
latency per level, and three ratios:

  1. throughput at 16 concurrent / sequential (goal >= 3x), the median over rounds of
     the levels run in turn (a shared machine's load drifts between levels);
  2. served storm (K = 8) p50 - served direct (latent_steps = 0, same model) p50, over
     K decode steps, at concurrency 1 (goal <= 1.1);
  3. server overhead: p50 at concurrency 1 / the engine's own latency for the same request
     (``Runner.prepare`` + ``Runner.run`` in this process, no HTTP) (goal <= 1.2).

Ratios 2 and 3 take storm, direct and engine-alone requests in turn (twice as many rounds
as requests per level), so a load change hits all three alike; beside ratio 2's p50
difference, the median of the per-round differences (same video, next to each other in time)
and the server's own rollout time, both steadier on a busy machine. Beside each level: the server process's CPU time per request (on a shared
machine the steadier measure of the work batching saves), and the cores the server and the
clients used (where other work holds the cores, the concurrent levels cannot use them); the
server's CPU includes its child processes (request preparation, engine;
``--single-process`` runs both in threads of the server process instead).

A random model stops at arbitrary tokens, so end-of-sequence is switched off in both
processes: every reply runs to its budget, and every request costs the same.

    PYTHONPATH=src python benchmarks/serve_load.py [--size tiny] [--requests 32] [--rounds 3]
        [--threads 1]
        [--max-wait-ms 10] [--workers 2] [--single-process] [--client raw|httpx] [--videos suite|noise]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 8
REPLY = 8  # tokens per reply
LEVELS = (1, 4, 16)
QUESTION = ("Where is the ball after the last swap?\nA. left\nB. middle\nC. right\n"
            "Answer with the option's letter from the given choices directly.")


def make_checkpoint(path: Path, size: str) -> Path:
    from stormvl.backbones import VideoSettings
    from stormvl.backbones.tiny import build_tiny
    from stormvl.training.build import Built, run_meta, save_model
    from stormvl.training.config import MethodConfig, TrainConfig, VideoConfig

    bb = build_tiny("qwen2_5_vl", size, seed=0)
    cfg = TrainConfig(method=MethodConfig(name="storm", k=K),
                      video=VideoConfig(num_frames=8, max_pixels=64 * 64, max_visual_tokens=4096))
    bb.video = VideoSettings(min_pixels=cfg.video.min_pixels, max_pixels=cfg.video.max_pixels)
    save_model(Built(bb), path, run_meta(cfg, 0))
    return path


def make_videos(root: Path, n: int, kind: str) -> None:
    """16 clips of 16 frames, 64 x 64 at 4 fps: the procedural suite's shell-game clips,
    written as ``stormvl synth`` writes them (lossless), or uniform noise (``noise``: the
    worst case for the decoder, ~2x the decode time of the suite's clips)."""
    from stormvl.data.video import write_video
    from stormvl.synth.registry import generate

    rng = np.random.default_rng(0)
    for i in range(n):
        if kind == "noise":
            write_video(root / f"v{i}.mp4", rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8),
                        fps=4)
        else:
            write_video(root / f"v{i}.mp4", generate("shell_game", i, frames=16, size=64).video,
                        fps=4, lossless=True)


def serve(ckpt: str, media: str, port: int, threads: int, max_wait_ms: float, workers: int,
          single_process: bool) -> None:
    """The server process: ``stormvl serve``'s app, end-of-sequence off."""
    import torch
    import uvicorn

    from stormvl.serve import ServeConfig
    from stormvl.serve.app import build_app

    torch.set_num_threads(threads)
    cfg = ServeConfig(port=port, media_root=media, max_batch=16, max_wait_ms=max_wait_ms,
                      max_queue=256, workers=workers, single_process=single_process)

    uvicorn.run(build_app(functools.partial(load_eos_off, ckpt, cfg), cfg), host="127.0.0.1", port=port, log_level="warning")


def load_eos_off(ckpt: str, cfg):
    """The served checkpoint with end-of-sequence off (in the engine process)."""
    from stormvl.serve.server import load_served

    served = load_served(ckpt, "cpu", cfg)
    served.runner.model.backbone.eos_ids = set()
    return served


def body(i: int, latent_steps: int | None = None) -> dict:
    b = {"model": "storm", "max_tokens": REPLY, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": f"v{i % 16}.mp4"}},
        {"type": "text", "text": QUESTION}]}]}
    if latent_steps is not None:
        b["latent_steps"] = latent_steps
    return b


class Connection:
    """One keep-alive HTTP/1.1 connection posting JSON (asyncio streams, Content-Length
    replies). Why not httpx here: its pure-Python HTTP parser costs ~1.3 ms of client CPU a
    chat request on loopback (0.7 ms against 0.2 for a bare GET), which would count as
    server latency and, at 16 clients on 2 cores, take CPU from the server;
    ``--client httpx`` measures with it instead."""

    def __init__(self, url: str):
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self._io = None

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        import json

        if self._io is None:
            self._io = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._io
        data = json.dumps(body).encode()
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
        length = next(int(v) for k, v in fields.items() if k.lower() == "content-length")
        return int(head[0].split()[1]), json.loads(await reader.readexactly(length))

    async def close(self) -> None:
        if self._io is not None:
            self._io[1].close()


class HttpxConnection:
    """The same interface over an ``httpx.AsyncClient`` (``--client httpx``)."""

    def __init__(self, url: str):
        import httpx

        self.url, self._client = url, httpx.AsyncClient(timeout=600)

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        r = await self._client.post(f"{self.url}{path}", json=body)
        return r.status_code, r.json()

    async def close(self) -> None:
        await self._client.aclose()


async def post(conn, i: int, latent_steps: int | None = None) -> dict:
    status, reply = await conn.post("/v1/chat/completions", body(i, latent_steps))
    if status != 200:
        raise SystemExit(f"the server answered {status}: {reply}")
    return reply


async def load_level(url: str, n: int, concurrency: int, client: type):
    """(wall seconds, per-request latencies, replies) for n requests at this concurrency,
    one connection per concurrent client."""
    conns: asyncio.Queue = asyncio.Queue()
    for _ in range(concurrency):
        conns.put_nowait(client(url))
    lat: list[float] = []
    replies: list[dict] = []

    async def one(i):
        conn = await conns.get()
        try:
            t0 = time.perf_counter()
            r = await post(conn, i)
            lat.append(time.perf_counter() - t0)
            replies.append(r)
        finally:
            conns.put_nowait(conn)

    await one(0)  # warm-up, not counted
    lat.clear()
    replies.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    while not conns.empty():
        await conns.get_nowait().close()
    return wall, lat, replies


async def paired(url: str, n: int, runner, media: Path, client: type):
    """Concurrency 1, in turn: a served storm request, a served direct one, and the same
    storm request through the engine alone in this process (drift in the machine's load
    hits all three alike): {"storm" | "direct": (latencies, replies), "engine": latencies}.

    The three take each place in a round equally often (the order rotates): whichever
    follows the engine-alone run meets a server that sat idle meanwhile, and ran ~0.3 ms
    slower in its prefill (docs/results/serve-load-2026-12-02.md) when that
    was always the storm request."""
    out = {"storm": ([], []), "direct": ([], []), "engine": []}
    kinds = [(None, "storm"), (0, "direct"), (None, "engine")]
    conn = client(url)
    for i in range(n + 1):
        for steps, name in kinds[i % 3:] + kinds[: i % 3]:
            if name == "engine":
                t = engine_once(runner, media, i)
                if i:
                    out["engine"].append(t)
                continue
            t0 = time.perf_counter()
            r = await post(conn, i, steps)
            if i:  # the first round warms up
                out[name][0].append(time.perf_counter() - t0)
                out[name][1].append(r)
    await conn.close()
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process, its live descendants (the server's
    preparation workers) and its children that have exited (Linux /proc)."""
    def ticks(p: int, own_children: bool) -> int:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile (then counted in its parent's children time)
            return 0
        return int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if own_children else 0)

    def children(p: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # a thread or process that just ended
                out += [int(c) for c in task.read_text().split()]
        return out

    total, todo = ticks(pid, True), children(pid)
    while todo:
        c = todo.pop()
        total += ticks(c, False)
        todo += children(c)
    return total / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def engine_runner(ckpt: str):
    """The checkpoint as ``stormvl eval`` loads it, in this process, end-of-sequence off."""
    from stormvl.evaluation import EvalSettings, Runner, load_model

    runner = Runner(load_model(ckpt, "cpu"), EvalSettings(max_new_tokens=REPLY))
    runner.model.backbone.eos_ids = set()
    return runner


def engine_once(runner, media: Path, i: int) -> float:
    """Seconds for request ``i`` through the runner alone (decode + generate, no HTTP)."""
    from stormvl.tasks.base import EvalItem

    t0 = time.perf_counter()
    runner.run([runner.prepare(EvalItem(f"q{i}", "load", media / f"v{i % 16}.mp4", QUESTION, ""))])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--requests", type=int, default=32, help="requests per level and round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of the three levels in turn (the ratio is their median)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    ap.add_argument("--max-wait-ms", type=float, default=10.0,
                    help="the server's --max-wait-ms (its default: 10)")
    ap.add_argument("--workers", type=int, default=2, help="the server's --workers (default: 2)")
    ap.add_argument("--videos", default="suite", choices=["suite", "noise"],
                    help="the requests' clips: the shell game's (default) or uniform noise")
    ap.add_argument("--single-process", action="store_true",
                    help="the server's --single-process: preparation and model in threads")
    ap.add_argument("--client", default="raw", choices=["raw", "httpx"],
                    help="the load generator's HTTP client: a bare keep-alive connection "
                         "(default) or httpx")
    ap.add_argument("--serve", nargs=3, metavar=("CKPT", "MEDIA", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve[0], args.serve[1], int(args.serve[2]), args.threads,
                     args.max_wait_ms, args.workers, args.single_process)
    import httpx
    import torch

    torch.set_num_threads(args.threads)
    client = Connection if args.client == "raw" else HttpxConnection
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_checkpoint(root / "storm", args.size)
        media = root / "media"
        media.mkdir()
        make_videos(media, 16, args.videos)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        server = subprocess.Popen([sys.executable, __file__, "--threads", str(args.threads),
                                   "--max-wait-ms", str(args.max_wait_ms),
                                   "--workers", str(args.workers),
                                   *(["--single-process"] if args.single_process else []),
                                   "--serve", str(ckpt), str(media), str(port)], env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 300
            while True:
                try:
                    if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            results = {c: [] for c in LEVELS}
            cpu = {c: [] for c in LEVELS}
            cores = {c: [] for c in LEVELS}
            for _ in range(args.rounds):  # levels in turn, so drift hits each level alike
                for c in LEVELS:
                    c0, w0, own0 = cpu_seconds(server.pid), time.perf_counter(), time.process_time()
                    results[c].append(asyncio.run(load_level(url, args.requests, c, client)))
                    used = cpu_seconds(server.pid) - c0
                    cpu[c].append(used / (args.requests + 1))
                    cores[c].append((used + time.process_time() - own0) / (time.perf_counter() - w0))
            runner = engine_runner(str(ckpt))
            pairs = asyncio.run(paired(url, 2 * args.requests, runner, media, client))
            own = statistics.median(pairs["engine"])
        finally:
            server.terminate()
            server.wait(60)

    print(f"qwen2_5_vl/{args.size} storm K={K}, {REPLY}-token replies, 8 frames of 64x64 "
          f"from 16-frame {'shell-game' if args.videos == 'suite' else 'noise'} clips, "
          f"{args.requests} requests per level, {args.threads} torch thread(s) per process, "
          f"CPU, loopback, {args.client} client; --max-batch 16 --max-wait-ms {args.max_wait_ms:g} --workers "
          f"{args.workers}{' --single-process' if args.single_process else ' (worker and engine processes)'}")
    print(f"{'concurrency':>11} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'mean batch':>10} "
          f"{'server CPU ms/req':>17} {'cores used':>10}")
    rate = {c: [args.requests / wall for wall, _, _ in runs] for c, runs in results.items()}
    for c, runs in results.items():
        lat = [x for _, ls, _ in runs for x in ls]
        batch = statistics.mean(r["stormvl"]["batch_size"] for _, _, rs in runs for r in rs)
        print(f"{c:>11} {statistics.median(rate[c]):8.2f} {pct(lat, 50) * 1000:8.1f} "
              f"{pct(lat, 95) * 1000:8.1f} {batch:10.2f} {statistics.median(cpu[c]) * 1000:17.1f} "
              f"{statistics.median(cores[c]):10.2f}")
    print(f"(medians over {args.rounds} rounds of the levels in turn; latency percentiles and "
          f"batch over all of them; cores used: server + client CPU seconds per wall second, of "
          f"{os.cpu_count()} here)")
    per_round = [t / s for s, t in zip(rate[1], rate[16], strict=True)]
    p50_storm, p50_direct = pct(pairs["storm"][0], 50), pct(pairs["direct"][0], 50)
    step = statistics.median(r["stormvl"]["latency_s"]["decode"] / r["usage"]["completion_tokens"]
                             for r in pairs["direct"][1])
    print(f"concurrency 1, in turn: storm p50 {p50_storm * 1000:.1f} ms, direct "
          f"(latent_steps=0) p50 {p50_direct * 1000:.1f} ms; decode step {step * 1000:.2f} ms; "
          f"engine alone (same storm request, in turn with them) p50 {own * 1000:.1f} ms")
    for name in ("storm", "direct"):
        rs = pairs[name][1]
        split = {k: statistics.median(r["stormvl"]["latency_s"][k] for r in rs) * 1000
                 for k in ("queue", "load", "prefill", "rollout", "decode", "total")}
        print(f"{name} (in turn), server-side medians (ms): "
              + ", ".join(f"{k} {v:.1f}" for k, v in split.items()))
    print(f"1. throughput 16 concurrent / sequential = {statistics.median(per_round):.2f}x "
          f"(goal >= 3x; median of the rounds: {', '.join(f'{r:.2f}' for r in per_round)}); "
          f"server CPU per request sequential / 16 concurrent = "
          f"{statistics.median(cpu[1]) / statistics.median(cpu[16]):.2f}x")
    paired_diff = statistics.median(a - b for a, b in zip(pairs["storm"][0], pairs["direct"][0],
                                                          strict=True))
    rollout = statistics.median(r["stormvl"]["latency_s"]["rollout"] for r in pairs["storm"][1])
    print(f"2. (storm p50 - direct p50) / (K x decode step) = "
          f"{(p50_storm - p50_direct) / (K * step):.2f} (goal <= 1.1); median of the paired "
          f"differences / (K x decode step) = {paired_diff / (K * step):.2f}; server-side "
          f"rollout / (K x decode step) = {rollout / (K * step):.2f}")
    print(f"3. server p50 / engine alone = {p50_storm / own:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
