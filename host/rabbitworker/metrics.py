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
from dataclasses import dataclass
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from rabbitworker.events import Delivery, Outcome, Settlement
from rabbitworker.hookspecs import hookimpl
from rabbitworker.settings import HostSettings
from rabbitworker.webserver import RunningServer, start_server

#: The event loop counts as unresponsive when its heartbeat is this late (seconds).
LOOP_STALL_LIMIT = 5.0


@dataclass(frozen=True, slots=True)
class _Children:
    received: Any
    acked: Any
    in_flight: Any
    duration: Any


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
        self._cache: dict[tuple[str, str], _Children] = {}
        self._server: RunningServer | None = None
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
        self._server = await start_server(self.app(), settings.metrics_host, settings.metrics_port)
        self._heartbeat_task = asyncio.create_task(self._heartbeat())
        logger.info(
            "metrics on http://{}:{}/metrics (also /healthz, /readyz)",
            settings.metrics_host,
            self._server.port,
        )

    @hookimpl
    async def rabbitworker_shutdown(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._server is not None:
            await self._server.stop()

    @hookimpl
    def rabbitworker_connection_changed(self, connected: bool) -> None:
        self.connected = connected
        self.connected_gauge.set(1 if connected else 0)

    @hookimpl
    def rabbitworker_consumer_changed(self, queue: str, consuming: bool) -> None:
        self.consuming[queue] = consuming
        self.consuming_gauge.labels(queue).set(1 if consuming else 0)

    def _children(self, queue: str, task: str) -> _Children:
        """The metric children of one queue and task, looked up once (``labels()`` is
        most of a metric's cost per message)."""
        key = (queue, task)
        children = self._cache.get(key)
        if children is None:
            children = self._cache[key] = _Children(
                self.received.labels(queue, task),
                self.acked.labels(queue, task),
                self.in_flight.labels(queue),
                self.duration.labels(queue, task),
            )
        return children

    @hookimpl
    def rabbitworker_message_received(self, delivery: Delivery) -> None:
        children = self._children(delivery.queue, delivery.task or "-")
        children.received.inc()
        children.in_flight.inc()

    @hookimpl
    def rabbitworker_message_settled(self, delivery: Delivery, outcome: Outcome) -> None:
        queue, task = delivery.queue, delivery.task or "-"
        children = self._children(queue, task)
        settlement = outcome.settlement
        if settlement is Settlement.ACKED:
            children.acked.inc()
        elif settlement is Settlement.UNSETTLED:
            self.unsettled.labels(queue).inc()
        elif settlement is Settlement.RETRIED:
            self.retried.labels(queue, task, str(outcome.reason)).inc()
        else:
            self.dead_lettered.labels(queue, task, str(outcome.reason)).inc()
        children.in_flight.dec()
        children.duration.observe(outcome.duration)

    # -- HTTP ------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            self._last_beat = time.monotonic()
            await asyncio.sleep(1)

    def app(self) -> Starlette:
        """The ASGI app serving ``/metrics``, ``/healthz`` and ``/readyz``."""
        return Starlette(
            routes=[
                Route("/metrics", self._metrics),
                Route("/healthz", self._healthz),
                Route("/readyz", self._readyz),
            ],
            exception_handlers={404: _not_found},
        )

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def _healthz(self, request: Request) -> Response:
        if self.healthy:
            return PlainTextResponse("ok\n")
        return PlainTextResponse("event loop stalled\n", status_code=503)

    async def _readyz(self, request: Request) -> Response:
        return PlainTextResponse(self._readiness_text(), status_code=200 if self.ready else 503)

    def _readiness_text(self) -> str:
        lines = [f"connected: {'yes' if self.connected else 'no'}"]
        lines += [
            f"{queue}: {'consuming' if on else 'NOT consuming'}"
            for queue, on in sorted(self.consuming.items())
        ]
        return "\n".join(lines) + "\n"


async def _not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("not found: try /metrics\n", status_code=404)
