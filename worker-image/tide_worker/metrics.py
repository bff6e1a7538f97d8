"""Prometheus metrics (own registry) and the HTTP server for /metrics, /healthz and /readyz."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self, queue: str) -> None:
        self.registry = CollectorRegistry()
        self.queue = queue
        labels = ["queue"]
        r = self.registry
        self._processed = Counter(
            "tide_messages_processed", "Messages handled successfully", labels, registry=r
        )
        self._failed = Counter(
            "tide_messages_failed", "Handler runs that failed (raised or timed out)", labels, registry=r
        )
        self._retried = Counter("tide_messages_retried", "Messages scheduled for a retry", labels, registry=r)
        self._dead = Counter(
            "tide_messages_dead_lettered", "Messages moved to dead letters", [*labels, "reason"], registry=r
        )
        self._deduped = Counter(
            "tide_messages_deduplicated", "Messages acked without running (already done)", labels, registry=r
        )
        self._requeued = Counter(
            "tide_messages_requeued",
            "Messages returned to the queue unfinished (shutdown)",
            labels,
            registry=r,
        )
        self._reaped = Counter(
            "tide_messages_reaped",
            "Messages of dead workers returned to the queue by this worker",
            labels,
            registry=r,
        )
        self._in_flight = Gauge(
            "tide_messages_in_flight", "Messages whose handler is running", labels, registry=r
        )
        self._abandoned = Gauge(
            "tide_handler_threads_abandoned",
            "Sync handler threads still running past their timeout",
            labels,
            registry=r,
        )
        self._connected = Gauge(
            "tide_redis_connected", "1 while the worker reaches Redis", labels, registry=r
        )
        self._duration = Histogram(
            "tide_handler_duration_seconds",
            "Handler run time",
            labels,
            registry=r,
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
                60,
                300,
            ),
        )
        self._wait = Histogram(
            "tide_queue_wait_seconds",
            "Queue wait of first attempts: the envelope's enqueue time to the handler's start",
            labels,
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
        )
        self.processed = self._processed.labels(queue)
        self.failed = self._failed.labels(queue)
        self.retried = self._retried.labels(queue)
        self.deduped = self._deduped.labels(queue)
        self.requeued = self._requeued.labels(queue)
        self.reaped = self._reaped.labels(queue)
        self.in_flight = self._in_flight.labels(queue)
        self.abandoned = self._abandoned.labels(queue)
        self.connected = self._connected.labels(queue)
        self.duration = self._duration.labels(queue)
        self.wait = self._wait.labels(queue)

    def dead(self, reason: str) -> None:
        self._dead.labels(self.queue, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """Serves /metrics, /healthz (the event loop ticks) and /readyz (connected, not shutting down)."""

    def __init__(
        self, metrics: Metrics, live: Callable[[], bool], ready: Callable[[], bool], port: int
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, outer.metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = outer.live()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"event loop stalled\n")
                elif path == "/readyz":
                    ok = outer.ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.metrics = metrics
        self.live = live
        self.ready = ready
        self.server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="tide-http", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoopWatch:
    """Liveness of the asyncio loop: a task ticks; /healthz fails when it has not ticked lately."""

    def __init__(self, stale_after: float = 15.0) -> None:
        self.stale_after = stale_after
        self.last = time.monotonic()

    def tick(self) -> None:
        self.last = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last < self.stale_after
