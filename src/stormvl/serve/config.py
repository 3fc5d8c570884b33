"""The server's settings: every ``stormvl serve`` flag, with its default and its limit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stormvl.serve.media import MediaLimits


@dataclass
class ServeConfig:
    """``stormvl serve`` settings (docs/serving.md explains each limit)."""

    host: str = "127.0.0.1"  # loopback only unless asked otherwise
    port: int = 8000
    max_batch: int = 8  # requests per engine call at most
    max_wait_ms: float = 10.0  # how long a ready request waits for others to join its call
    max_queue: int = 64  # requests in the server at once; past it 429 + Retry-After
    workers: int = 2  # processes preparing requests (decode, preprocess, tokenise)
    single_process: bool = False  # preparation and engine in threads of the server process
    media_root: str | None = None  # local video paths resolve under here (None: refused)
    allow_remote_media: bool = False  # fetch http(s) video URLs
    api_key: str | None = None  # every endpoint but /health needs "Authorization: Bearer KEY"
    served_name: str | None = None  # the model id clients send (default: the folder's name)
    max_body_mb: float = 64.0  # request body
    max_tokens_cap: int = 1024  # largest max_tokens a request may ask for
    request_timeout_s: float = 300.0  # from arrival to answer, queue included (then 504)
    decode_timeout_s: float = 30.0  # video decode / remote fetch deadline per request
    max_video_s: float = 3600.0  # source video duration
    max_input_frames: int = 512  # image_url frames in one request
    max_input_pixels: int = 4096 * 4096  # width x height of a source frame

    def validate(self) -> list[str]:
        """Every problem, each naming its flag."""
        out = []
        for flag, value, low in (("--port", self.port, 0), ("--max-batch", self.max_batch, 1),
                                 ("--max-queue", self.max_queue, 1), ("--workers", self.workers, 1),
                                 ("--max-tokens-cap", self.max_tokens_cap, 1),
                                 ("--max-input-frames", self.max_input_frames, 1),
                                 ("--max-input-pixels", self.max_input_pixels, 1)):
            if value < low:
                out.append(f"{flag} {value}: must be >= {low}")
        for flag, value in (("--max-wait-ms", self.max_wait_ms),):
            if value < 0:
                out.append(f"{flag} {value}: must be >= 0")
        for flag, value in (("--max-body-mb", self.max_body_mb),
                            ("--request-timeout-s", self.request_timeout_s),
                            ("--decode-timeout-s", self.decode_timeout_s),
                            ("--max-video-s", self.max_video_s)):
            if not value > 0:
                out.append(f"{flag} {value}: must be > 0")
        if self.port > 65535:
            out.append(f"--port {self.port}: must be <= 65535")
        if self.media_root is not None and not Path(self.media_root).is_dir():
            out.append(f"--media-root {self.media_root}: not a folder")
        if self.api_key is not None and not self.api_key.strip():
            out.append("--api-key: empty")
        return out

    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            root=Path(self.media_root).resolve() if self.media_root else None,
            allow_remote=self.allow_remote_media, max_video_s=self.max_video_s,
            max_frames=self.max_input_frames, max_pixels=self.max_input_pixels,
            max_remote_bytes=int(self.max_body_mb * (1 << 20)), timeout_s=self.decode_timeout_s)
