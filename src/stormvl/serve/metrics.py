"""Prometheus metrics of one server, in a registry of its own (so two apps in one process,
as in the tests, never share counters). Read them at ``GET /metrics``; docs/serving.md lists
each series and what to watch."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# request latency on CPU runs from ~10 ms (tiny model) to minutes (a 7B model, long video)
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Counters, gauges and histograms the app and the batcher update."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("stormvl_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("stormvl_request_errors", "Failed requests by kind "
                              "(invalid_request, auth, queue_full, timeout, engine, ...)",
                              ["kind"], registry=r)
        self.queue_depth = Gauge("stormvl_queue_depth",
                                 "Admitted requests not yet in an engine call", registry=r)
        self.running = Gauge("stormvl_running_requests", "Requests in the current engine call",
                             registry=r)
        self.batch_size = Histogram("stormvl_batch_size", "Requests per engine call",
                                    buckets=_BATCH, registry=r)
        self.engine_calls = Counter("stormvl_engine_calls", "Engine calls (batches) run",
                                    registry=r)
        self.phase = Histogram("stormvl_phase_seconds", "Engine time per call by phase "
                               "(prefill, rollout, decode)", ["phase"], buckets=_LATENCY,
                               registry=r)
        self.load = Histogram("stormvl_media_load_seconds", "Video decode + preprocessing per "
                              "request (worker pool)", buckets=_LATENCY, registry=r)
        self.queue_wait = Histogram("stormvl_queue_wait_seconds", "From prepared to the start "
                                    "of its engine call", buckets=_LATENCY, registry=r)
        self.latency = Histogram("stormvl_request_latency_seconds", "End-to-end latency of "
                                 "answered chat requests", buckets=_LATENCY, registry=r)
        self.prompt_tokens = Counter("stormvl_prompt_tokens", "Prompt tokens (video "
                                     "placeholders included)", registry=r)
        self.completion_tokens = Counter("stormvl_completion_tokens", "Generated tokens",
                                         registry=r)
        self.latent_steps = Counter("stormvl_latent_steps", "Latent rollout steps run",
                                    registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
