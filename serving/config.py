"""Server settings: one dataclass shared by the CLI, the app and the workers."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

API_KEY_ENV = "SERVING_API_KEY"
CONFIG_ENV = "SERVING_CONFIG_JSON"  # how `--workers N` hands the settings to each worker


def _default_decode_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class ServingConfig:
    """Everything `python -m serving` can be told; defaults are the CLI's."""

    model_base_path: str
    model_name: str = ""  # "" -> basename of model_base_path
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32  # images per model call; 1 turns batching off
    batch_timeout_ms: float = 5.0  # how long a non-full batch waits for more images
    max_body_bytes: int = 16 * 1024 * 1024
    max_images: int = 32  # images per request
    max_pixels: int = 4096 * 4096  # width * height of one image, from its header
    max_queue_images: int = 1024  # images waiting for the model before 503
    api_key: str | None = field(default=None, repr=False)
    poll_seconds: float = 2.0  # how often to look for new versions; 0 = never
    settle_seconds: float = 10.0  # a version without published.json is served once unchanged this long
    require_published: bool = False  # serve only versions with published.json (no settle rule)
    decode_threads: int = field(default_factory=_default_decode_threads)
    workers: int = 1
    keep_alive_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this (uvicorn's default)
    header_timeout_s: float = 10.0  # request line + headers must arrive within this of their first byte
    body_timeout_s: float = 30.0  # longest wait for the next piece of a request body (nginx's idea)
    max_header_bytes: int = 64 * 1024  # request line + headers, 431 above (nginx allows 4 x 8 KiB)
    log_level: str = "info"
    similar_index: str | None = None  # None: each version's own <version>/similar/ (serving.similar)
    similar_fields: str = "case_id,label,similarity,metadata"  # what /similar and ?similar=k return

    def __post_init__(self) -> None:
        if not self.model_name:
            self.model_name = Path(self.model_base_path.rstrip("/\\")).name or "model"

    def validate(self) -> None:
        """Raise ValueError with a one-line message for settings that cannot work."""
        checks = [
            (self.max_batch_size >= 1, "--max-batch-size must be >= 1"),
            (self.batch_timeout_ms >= 0, "--batch-timeout-ms must be >= 0"),
            (self.max_body_bytes >= 1024, "--max-body-bytes must be >= 1024"),
            (self.max_images >= 1, "--max-images must be >= 1"),
            (self.max_pixels >= 1, "--max-pixels must be >= 1"),
            (self.max_queue_images >= 1, "--max-queue-images must be >= 1"),
            (self.poll_seconds >= 0, "--poll-seconds must be >= 0"),
            (self.settle_seconds >= 0, "--settle-seconds must be >= 0"),
            (self.decode_threads >= 1, "--decode-threads must be >= 1"),
            (self.workers >= 1, "--workers must be >= 1"),
            (self.keep_alive_timeout_s > 0, "--keep-alive-timeout must be > 0"),
            (self.header_timeout_s > 0, "--header-timeout must be > 0"),
            (self.body_timeout_s > 0, "--body-timeout must be > 0"),
            (self.max_header_bytes >= 1024, "--max-header-bytes must be >= 1024"),
            (0 <= self.port <= 65535, "--port must be in 0..65535"),
            (self.api_key is None or self.api_key.strip() != "", "--api-key must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        from .similar import check_fields

        check_fields(self.similar_fields)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServingConfig":
        return cls(**json.loads(text))


def setup_logging(level: str) -> None:
    """The server's log format, for the CLI and for each --workers process; TensorFlow's
    import noise (the oneDNN notice) kept out of the log (tfmicle.cli.quiet_tensorflow)."""
    import logging

    from tfmicle.cli import quiet_tensorflow

    quiet_tensorflow()
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
