"""``stormvl serve``: an OpenAI-compatible HTTP server over a stormvl checkpoint that batches
concurrent requests into one latent-engine call (docs/serving.md).

``app`` (HTTP API), ``batcher`` (admission + batching), ``engine`` (request -> job -> answer
through the evaluator's runner), ``media`` (a request's video, within the limits),
``workers`` (request preparation in worker processes or threads), ``schema`` (request
models, errors), ``metrics`` (Prometheus), ``config`` (the flags).
"""

from stormvl.serve.config import ServeConfig

__all__ = ["ServeConfig"]
