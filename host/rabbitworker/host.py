"""The running host: connect, declare, consume every queue, and stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from loguru import logger

from rabbitworker.dispatch import QueueConsumer
from rabbitworker.errors import BrokerConnectionError
from rabbitworker.plugins import HostPlugins, QueueRegistration
from rabbitworker.publish import close_publishers
from rabbitworker.settings import HostSettings
from rabbitworker.topology import declare_topology, plan_topology


class WorkerHost:
    """Everything between "plugins are loaded" and "process exits"."""

    def __init__(
        self,
        settings: HostSettings,
        plugins: HostPlugins,
        registrations: list[QueueRegistration],
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.registrations = registrations
        self.topology = plan_topology(registrations)
        self.consumers: list[QueueConsumer] = []
        self._connection: AbstractRobustConnection | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._signals = 0
        self._backoff: asyncio.Task[None] | None = None
        self.started = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._was_connected = False

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up right now."""
        return self._connection is not None and self._connection.connected.is_set()

    @property
    def ready(self) -> bool:
        """Connected and consuming on every queue."""
        return (
            self.connected
            and bool(self.consumers)
            and all(consumer.consuming for consumer in self.consumers)
        )

    def request_stop(self, signame: str = "stop request") -> None:
        """First call: stop gracefully. Second call: stop now, abandoning in-flight messages."""
        self._signals += 1
        if self._signals == 1:
            logger.info(
                "{} received: stopping, letting in-flight messages finish (up to {:g} s)",
                signame,
                self.settings.shutdown_timeout,
            )
            self._stop.set()
        else:
            logger.warning(
                "{} received again: stopping now; unfinished messages stay unacknowledged "
                "and will be redelivered",
                signame,
            )
            self._force.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Serve until :meth:`request_stop` (or SIGTERM/SIGINT); raise on a start-up failure.

        :param handle_signals: install the SIGTERM/SIGINT handlers (off when embedded).
        """
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        # Plain `def` handlers get their own pool: asyncio.to_thread in async handlers
        # keeps the loop's default one and never queues behind busy handlers.
        executor = self._executor = self._thread_pool()
        await self.plugins.startup(self.settings)
        try:
            await self._connect()
            await self._consume()
            self.started.set()
            await self._stop.wait()
            await self._drain()
        finally:
            await self._close()
            await self.plugins.shutdown(self.settings)
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    def _thread_pool(self) -> ThreadPoolExecutor | None:
        sync_slots = sum(
            r.config.prefetch_count for r in self.registrations if r.config.has_sync_handlers
        )
        threads = self.settings.sync_handler_threads or sync_slots
        if not threads:
            return None
        return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rabbitworker-handler")

    async def _connect(self) -> None:
        url = self.settings.masked_amqp_url
        try:
            self._connection = await aio_pika.connect_robust(
                self.settings.amqp_url,
                timeout=self.settings.connect_timeout,
                reconnect_interval=self.settings.reconnect_interval,
                client_properties={
                    "connection_name": f"rabbitworker-host {socket.gethostname()}:{os.getpid()}"
                },
            )
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            raise BrokerConnectionError(
                f"cannot connect to {url}: {type(exc).__name__}: {exc}. Is RabbitMQ running "
                "there? Set RABBITWORKER_AMQP_URL to the broker to use."
            ) from exc
        logger.info("connected to {}", url)
        self._was_connected = True
        self.plugins.connection_changed(connected=True, detail=f"connected to {url}")
        self._connection.close_callbacks.add(self._on_connection_lost)
        self._connection.reconnect_callbacks.add(self._on_reconnected)
        channel = await self._connection.channel()
        await declare_topology(channel, self.topology)
        await channel.close()
        logger.info(
            "declared {} exchange(s) and {} queue(s)",
            len(self.topology.exchanges),
            len(self.topology.queues),
        )

    def _on_connection_lost(self, _: Any, exc: BaseException | None) -> None:
        if self._stop.is_set() or exc is None or not self._was_connected:
            # Failed reconnection attempts close again; the outage was reported once.
            return
        self._was_connected = False
        self.plugins.connection_changed(connected=False, detail=f"{type(exc).__name__}: {exc}")
        for consumer in self.consumers:
            consumer.connection_lost()
        logger.warning(
            "lost the broker connection ({}: {}); reconnecting. Messages in flight stay "
            "unacknowledged and will be delivered again",
            type(exc).__name__,
            exc,
        )
        if self._backoff is None or self._backoff.done():
            self._backoff = asyncio.create_task(self._back_off())

    async def _on_reconnected(self, _: Any) -> None:
        assert self._connection is not None
        self._was_connected = True
        self._connection.reconnect_interval = self.settings.reconnect_interval  # type: ignore[attr-defined]
        self.plugins.connection_changed(
            connected=True, detail=f"reconnected to {self.settings.masked_amqp_url}"
        )
        for consumer in self.consumers:
            await consumer.restored()
        logger.info(
            "reconnected to {}; re-declared and consuming again on {} queue(s)",
            self.settings.masked_amqp_url,
            len(self.consumers),
        )

    async def _back_off(self) -> None:
        """aio-pika retries at a fixed interval; double it while the broker stays away."""
        interval = self.settings.reconnect_interval
        while self._connection is not None and not self.connected and not self._stop.is_set():
            self._connection.reconnect_interval = interval  # type: ignore[attr-defined]
            await asyncio.sleep(interval)
            interval = min(interval * 2, self.settings.reconnect_interval_max)

    async def _consume(self) -> None:
        assert self._connection is not None
        for registration in self.registrations:
            config = registration.config
            channel = await self._connection.channel(on_return_raises=True)
            consumer = QueueConsumer(
                config,
                channel,
                self.plugins,
                max_message_bytes=self.settings.max_message_bytes,
                executor=self._executor,
            )
            await consumer.start()
            self.consumers.append(consumer)
            logger.info(
                "[{}] consuming: routing key {!r} on exchange {!r}, prefetch {}, handlers {}, "
                "DLX {!r} → DLQ {!r} (plugin {})",
                config.name,
                config.routing_key,
                config.exchange_name,
                config.prefetch_count,
                ", ".join(config.tasks),
                config.dlx_exchange_name,
                config.dlq_name,
                registration.plugin.describe(),
            )
        logger.info("consuming from {} queue(s)", len(self.consumers))

    async def _drain(self) -> None:
        cancel_timeout = min(5.0, self.settings.shutdown_timeout or 5.0)
        for consumer in self.consumers:
            try:
                await asyncio.wait_for(consumer.stop_consuming(), timeout=cancel_timeout)
            except Exception as exc:
                logger.warning(
                    "[{}] could not cancel the consumer cleanly ({}: {}); closing the "
                    "connection will",
                    consumer.config.name,
                    type(exc).__name__,
                    exc,
                )
        in_flight = sum(consumer.in_flight for consumer in self.consumers)
        if in_flight:
            logger.info("waiting for {} in-flight message(s) to finish", in_flight)
        idle: asyncio.Future[Any] = asyncio.gather(
            *(consumer.wait_idle() for consumer in self.consumers)
        )
        force: asyncio.Future[Any] = asyncio.ensure_future(self._force.wait())
        done, _ = await asyncio.wait(
            {idle, force},
            timeout=self.settings.shutdown_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        force.cancel()
        if idle not in done:
            idle.cancel()
            # Cancelling a gather sets CancelledError as its exception: read it, or asyncio
            # logs "exception was never retrieved" with a traceback.
            idle.add_done_callback(lambda future: future.cancelled() or future.exception())
            abandoned = sum(consumer.abandon_in_flight() for consumer in self.consumers)
            logger.warning(
                "{} message(s) still running; left unacknowledged, the broker will deliver "
                "them again",
                abandoned,
            )
            await asyncio.sleep(0)

    async def _close(self) -> None:
        for consumer in self.consumers:
            try:
                await asyncio.wait_for(consumer.flush_acks(), timeout=2)
            except Exception as exc:
                logger.warning("[{}] pending acks not written: {}", consumer.config.name, exc)
            consumer.close()
        if self._backoff is not None:
            self._backoff.cancel()
        try:
            await asyncio.wait_for(close_publishers(), timeout=5)
        except Exception as exc:
            logger.warning("closing the publisher failed: {}", exc)
        if self._connection is not None:
            # aiormq's close waits for the consumer tasks; a handler that ignored its
            # cancellation never ends, so do not wait the full 5 s for it in vain.
            stuck = any(consumer.in_flight for consumer in self.consumers)
            try:
                await asyncio.wait_for(self._connection.close(), timeout=1 if stuck else 5)
            except Exception as exc:
                logger.warning(
                    "closing the broker connection failed ({}: {}); exiting anyway",
                    type(exc).__name__,
                    exc,
                )
        logger.info("stopped")
