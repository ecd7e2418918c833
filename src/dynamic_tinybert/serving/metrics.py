"""`/metrics` in the Prometheus text format: what the service did, what it queued, what each request ran.

Each app has its own registry, so several apps in one process (tests, a replica per process) never share
counts. Labels are bounded: endpoints are the app's routes, statuses the codes it answers with, and a
length configuration is counted by its MACs ratio bucket, never by the free text a request may send.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dtb_requests", "HTTP requests answered, by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "dtb_request_duration_seconds",
            "time from request to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("dtb_requests_admitted", "answering requests admitted, waiting or running", registry=r)
        self.queue_windows = Gauge("dtb_queue_windows", "windows waiting for the model", registry=r)
        self.queue_wait = Histogram(
            "dtb_queue_wait_seconds",
            "time from submission to a request's first window entering the model",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_windows = Histogram(
            "dtb_batch_windows", "windows per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.batch_tokens = Histogram(
            "dtb_batch_padded_tokens",
            "padded tokens per forward pass",
            buckets=(128, 256, 512, 1024, 2048, 4096, 8192, 16384),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "dtb_batch_seconds", "time of one forward pass", buckets=LATENCY_BUCKETS, registry=r
        )
        self.macs_ratio = Histogram(
            "dtb_macs_ratio",
            "MACs ratio (of the full model) each answered request ran at",
            buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=r,
        )
        self.shed = Counter("dtb_shed", "requests refused to protect the others, by reason", ["reason"], registry=r)
        self.cancelled = Counter(
            "dtb_cancelled", "requests whose queued work was dropped, by reason", ["reason"], registry=r
        )
        self.correction = Gauge(
            "dtb_prediction_correction",
            "measured over predicted model time of recent batches, by batch size class (its smallest size)",
            ["batch"],
            registry=r,
        )
        self.tail_ms = Gauge(
            "dtb_slo_tail_ms",
            "the 99th percentile of recent requests' time beyond their predicted time, in ms (--slo-ms adds it to "
            "predictions), by the decision predicted: admission (the queue ahead) or dispatch (from their turn)",
            ["decision"],
            registry=r,
        )

    def observe_batch(self, windows: int, padded_tokens: int, seconds: float) -> None:
        self.batch_windows.observe(windows)
        self.batch_tokens.observe(padded_tokens)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
