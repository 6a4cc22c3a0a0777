"""Built-in plugin: Prometheus metrics, ``/healthz`` and ``/readyz``, on the same hooks any
plugin can implement. Loaded only when ``RABBITWORKER_METRICS_PORT`` is set.

- ``/metrics``: per queue and task, messages received, acked, retried and dead-lettered
  (by reason), handler duration, messages in flight, and the connection state.
- ``/healthz``: 200 while the process is alive and its event loop responsive.
- ``/readyz``: 200 while connected to the broker and consuming every queue, else 503.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rabbitworker.events import Delivery, Outcome, Settlement
from rabbitworker.hookspecs import hookimpl
from rabbitworker.settings import HostSettings

#: The event loop counts as unresponsive when its heartbeat is this late (seconds).
LOOP_STALL_LIMIT = 5.0


class MetricsPlugin:
    """Counts what the host does, from its hooks, and serves it over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("queue", "task")
        self.received = Counter(
            "rabbitworker_messages_received",
            "Messages delivered to a queue.",
            labels,
            registry=self.registry,
        )
        self.acked = Counter(
            "rabbitworker_messages_acked",
            "Messages handled and acknowledged.",
            labels,
            registry=self.registry,
        )
        self.retried = Counter(
            "rabbitworker_messages_retried",
            "Failed messages sent to a delay queue for a retry.",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "rabbitworker_messages_dead_lettered",
            "Messages sent to the dead-letter queue.",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.unsettled = Counter(
            "rabbitworker_messages_unsettled",
            "Messages left unacknowledged for redelivery (shutdown, lost channel).",
            ("queue",),
            registry=self.registry,
        )
        self.duration = Histogram(
            "rabbitworker_handler_duration_seconds",
            "Time from delivery to settlement.",
            labels,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "rabbitworker_messages_in_flight",
            "Messages being handled now.",
            ("queue",),
            registry=self.registry,
        )
        self.connected_gauge = Gauge(
            "rabbitworker_connected", "1 while connected to the broker.", registry=self.registry
        )
        self.consuming_gauge = Gauge(
            "rabbitworker_queue_consuming",
            "1 while the queue is being consumed.",
            ("queue",),
            registry=self.registry,
        )
        self.connected = False
        self.consuming: dict[str, bool] = {}
        self._server: asyncio.Server | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._last_beat = time.monotonic()

    @property
    def ready(self) -> bool:
        return self.connected and bool(self.consuming) and all(self.consuming.values())

    @property
    def healthy(self) -> bool:
        return time.monotonic() - self._last_beat < LOOP_STALL_LIMIT

    # -- hooks -----------------------------------------------------------------------------

    @hookimpl
    async def rabbitworker_startup(self, settings: HostSettings) -> None:
        assert settings.metrics_port is not None
        self._server = await asyncio.start_server(
            self._serve, settings.metrics_host, settings.metrics_port
        )
        self._heartbeat_task = asyncio.create_task(self._heartbeat())
        port = self._server.sockets[0].getsockname()[1]
        logger.info(
            "metrics on http://{}:{}/metrics (also /healthz, /readyz)", settings.metrics_host, port
        )

    @hookimpl
    async def rabbitworker_shutdown(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @hookimpl
    def rabbitworker_connection_changed(self, connected: bool) -> None:
        self.connected = connected
        self.connected_gauge.set(1 if connected else 0)

    @hookimpl
    def rabbitworker_consumer_changed(self, queue: str, consuming: bool) -> None:
        self.consuming[queue] = consuming
        self.consuming_gauge.labels(queue).set(1 if consuming else 0)

    @hookimpl
    def rabbitworker_message_received(self, delivery: Delivery) -> None:
        self.received.labels(delivery.queue, delivery.task or "-").inc()
        self.in_flight.labels(delivery.queue).inc()

    @hookimpl
    def rabbitworker_message_settled(self, delivery: Delivery, outcome: Outcome) -> None:
        queue, task = delivery.queue, delivery.task or "-"
        settlement = outcome.settlement
        if settlement is Settlement.UNSETTLED:
            self.unsettled.labels(queue).inc()
        elif settlement is Settlement.ACKED:
            self.acked.labels(queue, task).inc()
        elif settlement is Settlement.RETRIED:
            self.retried.labels(queue, task, str(outcome.reason)).inc()
        else:
            self.dead_lettered.labels(queue, task, str(outcome.reason)).inc()
        self.in_flight.labels(queue).dec()
        self.duration.labels(queue, task).observe(outcome.duration)

    # -- HTTP ------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            self._last_beat = time.monotonic()
            await asyncio.sleep(1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, content_type, body = (
                    200,
                    CONTENT_TYPE_LATEST,
                    generate_latest(self.registry),
                )
            elif path == "/healthz":
                ok = self.healthy
                status, content_type = (200 if ok else 503), "text/plain; charset=utf-8"
                body = b"ok\n" if ok else b"event loop stalled\n"
            elif path == "/readyz":
                status, content_type = (200 if self.ready else 503), "text/plain; charset=utf-8"
                body = self._readiness_text().encode()
            else:
                status, content_type, body = 404, "text/plain", b"not found: try /metrics\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _readiness_text(self) -> str:
        lines = [f"connected: {'yes' if self.connected else 'no'}"]
        lines += [
            f"{queue}: {'consuming' if on else 'NOT consuming'}"
            for queue, on in sorted(self.consuming.items())
        ]
        return "\n".join(lines) + "\n"
