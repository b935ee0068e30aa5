"""Prometheus metrics: one registry per app (so tests can run several apps), or, under
``--workers N``, prometheus_client's multiprocess mode, so that a scrape of /metrics,
whichever worker answers it, gives the sum over all workers.

Multiprocess mode is on when ``PROMETHEUS_MULTIPROC_DIR`` is set (the CLI sets it to a
fresh folder for ``--workers N`` before the workers start, as prometheus_client needs it
set before it is imported): each worker writes its values to files there and /metrics
reads them all. Counters and histograms add up; the gauges say how they combine.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics
from prometheus_client import multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

disable_created_metrics()  # the *_created series double the output and nobody graphs them

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
VERSION_STATES = {"AVAILABLE": "served", "START": "waiting", "END": "refused"}  # TF Serving's -> the gauge's


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        # In multiprocess mode the values live in the shared folder, not in a registry.
        r = None if self.multiprocess else self.registry
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
        self.queue_images = Gauge("serving_queue_images", "Images waiting for the model (all workers).",
                                  registry=r, multiprocess_mode="livesum")
        self.model_version = Gauge("serving_model_version", "Version being served (the lowest over the workers).",
                                   ["model"], registry=r, multiprocess_mode="livemin")
        self.model_loads = Counter(
            "serving_model_loads_total", "Model version loads by result.", ["model", "result"], registry=r,
        )
        # Alert on waiting > 0 for long (a copy that never completes, a version never
        # published) and refused > 0 (a broken version): the status route says why.
        self.model_versions = Gauge(
            "serving_model_versions", "Version folders by state: served, waiting (not ready to load), refused "
            "(failed to load). Each worker sees the same folder: the highest over the workers.",
            ["model", "state"], registry=r, multiprocess_mode="livemax",
        )

    def on_load(self, model: str, version: int, success: bool) -> None:
        self.model_loads.labels(model, "success" if success else "failure").inc()
        if success:
            self.model_version.labels(model).set(version)

    def on_states(self, model: str, states: list) -> None:
        """After each look at the repository: its versions (serving.repository.VersionState)
        counted by state."""
        counts = {name: 0 for name in VERSION_STATES.values()}
        for s in states:
            counts[VERSION_STATES[s.state]] += 1
        for name, n in counts.items():
            self.model_versions.labels(model, name).set(n)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def close(self) -> None:
        """At worker exit: its live gauges (queue, version) stop counting."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())
