"""Prometheus metrics (one CollectorRegistry per app, so several apps can live in one process) and logging.

Label values are bounded: endpoints are route templates, and model and sampler labels are set by the
handlers only after validation (loaded names, known samplers), never copied from raw input.
"""

import logging
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LABELS_KEY = "metric_labels"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Telemetry:
    """The service's metrics, registered in their own registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("endpoint", "model", "sampler")
        self.requests = Counter(
            "ctm_http_requests", "HTTP requests answered.", (*labels, "status"), registry=self.registry
        )
        self.latency = Histogram(
            "ctm_http_request_duration_seconds",
            "Time from request to the end of the response.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.samples = Counter(
            "ctm_samples_generated", "Samples generated.", ("model", "sampler"), registry=self.registry
        )
        self.models_loaded = Gauge("ctm_models_loaded", "Models being served.", registry=self.registry)
        self.checkpoints_rejected = Gauge(
            "ctm_checkpoints_rejected", "Checkpoint files that failed validation.", registry=self.registry
        )

    def observe_request(self, endpoint: str, model: str, sampler: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, model, sampler, str(status)).inc()
        self.latency.labels(endpoint, model, sampler).observe(seconds)

    def count_samples(self, model: str, sampler: str, n: int) -> None:
        self.samples.labels(model, sampler).inc(n)

    def render(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)


def label_request(request: Request, *, model: str = "", sampler: str = "") -> None:
    """Attach validated model and sampler names to the request's metrics."""
    labels = request.scope.get("state", {}).get(_LABELS_KEY)
    if labels is not None:
        labels.update(model=model, sampler=sampler)


class MetricsMiddleware:
    """ASGI middleware: counts every HTTP request and times it to the end of its response."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        labels: dict[str, Any] = {"model": "", "sampler": ""}
        scope.setdefault("state", {})[_LABELS_KEY] = labels
        status = 500
        start = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # The router records the matched route in the scope; its template bounds the label.
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.telemetry.observe_request(
                endpoint, labels["model"], labels["sampler"], status, time.perf_counter() - start
            )


def configure_logging(level: str) -> None:
    """Give the service's loggers one plain line format, unless the host application configured logging."""
    service_logger = logging.getLogger("service")
    service_logger.setLevel(level.upper())
    if not service_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        service_logger.addHandler(handler)
