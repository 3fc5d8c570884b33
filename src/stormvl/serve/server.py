"""Running the app under uvicorn: load the checkpoint (in the background, so ``/health``
answers meanwhile), serve, and shut down gracefully on SIGTERM / Ctrl-C.

SIGTERM: ``/ready`` turns 503 at once (a load balancer stops sending), uvicorn stops
accepting connections and lets in-flight requests finish (up to the request timeout), then
the batcher fails whatever is left with 503, the preparation workers and the engine process
are stopped, and the process exits 0.
"""

from __future__ import annotations

import functools
import logging
import signal
from pathlib import Path

from stormvl.serve.config import ServeConfig
from stormvl.serve.engine import ServedModel


def load_served(checkpoint: str, device: str, cfg: ServeConfig) -> ServedModel:
    """The checkpoint behind the server, loaded as ``stormvl eval`` loads it (its training
    video settings, safetensors weights, no remote code)."""
    from stormvl.evaluation import EvalSettings, Runner, load_model

    runner = Runner(load_model(checkpoint, device), EvalSettings())
    name = cfg.served_name or Path(checkpoint).resolve().name
    return ServedModel(runner, name, cfg.media_limits(), cfg.max_tokens_cap)


def log_to_stderr() -> None:
    log = logging.getLogger("stormvl.serve")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def run(checkpoint: str, device: str, cfg: ServeConfig) -> None:
    """Serve until SIGTERM / Ctrl-C.

    Raises:
        UserError: the checkpoint cannot be loaded or served (the server stops first).
    """
    import uvicorn

    from stormvl.serve.app import build_app

    failure: list[BaseException] = []

    def failed(exc: BaseException) -> None:
        failure.append(exc)
        server.should_exit = True

    app = build_app(functools.partial(load_served, checkpoint, device, cfg), cfg, failed)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.fastapi.state.serve.draining = True  # /ready -> 503 before anything closes
            super().handle_exit(sig, frame)

    log_to_stderr()
    server = Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, lifespan="on",
                                   log_level="info", timeout_graceful_shutdown=int(
                                       cfg.request_timeout_s) + 5))
    # uvicorn re-raises the signal after its graceful shutdown; with this handler in place
    # that re-raise is a no-op, so a SIGTERM ends the process with exit code 0
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failure:  # a UserError becomes the CLI's one error line; anything else is a bug
        raise failure[0]
