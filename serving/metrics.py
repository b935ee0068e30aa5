"""Prometheus metrics, one registry per app (so tests can run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics

disable_created_metrics()  # the *_created series double the output and nobody graphs them

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "serving_requests_total", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "serving_request_duration_seconds", "HTTP request latency by route template.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.images = Counter("serving_images_total", "Images accepted for inference.", registry=r)
        self.invalid_requests = Counter(
            "serving_invalid_requests_total",
            "Requests refused while parsing the body or checking its images, by HTTP status.",
            ["status"], registry=r,
        )
        self.batch_size = Histogram(
            "serving_batch_size", "Images per model call.", buckets=BATCH_BUCKETS, registry=r,
        )
        self.batch_requests = Histogram(
            "serving_batch_requests", "Requests merged into one model call.", buckets=BATCH_BUCKETS, registry=r,
        )
        self.inference = Histogram(
            "serving_inference_duration_seconds", "Model call latency.", buckets=LATENCY_BUCKETS, registry=r,
        )
        # explain=1 costs a backward pass: its own counters, so its load shows on its own
        self.explain_requests = Counter(
            "serving_explain_requests_total", "POST /classify requests with explain=1.", registry=r,
        )
        self.explain_images = Counter(
            "serving_explain_images_total", "Images explained (Grad-CAM) for explain=1.", registry=r,
        )
        self.queue_images = Gauge("serving_queue_images", "Images waiting for the model.", registry=r)
        self.model_version = Gauge("serving_model_version", "Version being served.", ["model"], registry=r)
        self.model_loads = Counter(
            "serving_model_loads_total", "Model version loads by result.", ["model", "result"], registry=r,
        )

    def on_load(self, model: str, version: int, success: bool) -> None:
        self.model_loads.labels(model, "success" if success else "failure").inc()
        if success:
            self.model_version.labels(model).set(version)

    def render(self) -> bytes:
        return generate_latest(self.registry)
