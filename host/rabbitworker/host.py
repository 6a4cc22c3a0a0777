"""The running host: connect, declare, consume every queue, and stop cleanly on a signal.

Two connections: one consumes and acks (every queue on its own channel), the other stores
retry and dead-letter copies. A broker alarm blocks connections that publish; keeping the
copies apart keeps the acks of healthy messages flowing while copies wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiormq.abc import AbstractConnection
from loguru import logger

from rabbitworker.broker import CONNECT_ERRORS, Connector, Supervisor, closed_reason
from rabbitworker.consumer import QueueConsumer
from rabbitworker.handlers import bind_loop_thread
from rabbitworker.ledger import Ledger, NoteKind
from rabbitworker.plugins import HostPlugins, QueueRegistration, activate
from rabbitworker.publish import ConfirmingPublisher, close_publishers
from rabbitworker.settings import HostSettings
from rabbitworker.settler import Settler
from rabbitworker.topology import (
    copies_topology,
    declare_topology,
    plan_topology,
    work_queue_topology,
)

#: Seconds the whole consumer cancellation may take at shutdown (all queues together).
CANCEL_BOUND = 5.0
#: Seconds abandoned handlers get to acknowledge their cancellation before the exit.
ABANDON_GRACE = 1.0


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
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._signals = 0
        self.started = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._supervisor = Supervisor(
            self._connector("rabbitworker-host"),
            on_up=self._on_up,
            on_down=self._on_down,
            reconnect_interval=settings.reconnect_interval,
            reconnect_interval_max=settings.reconnect_interval_max,
        )
        self._copies = ConfirmingPublisher(
            self._connector("rabbitworker-host copies"),
            timeout=settings.publish_timeout,
            hooks=plugins.message_hooks(),
        )
        self.ledger = Ledger(self._copies, timeout=settings.publish_timeout)
        self._first_up = True

    def _connector(self, role: str) -> Connector:
        return Connector(
            self.settings.amqp_urls,
            role=role,
            connect_timeout=self.settings.connect_timeout,
            heartbeat=self.settings.heartbeat,
        )

    @property
    def connected(self) -> bool:
        """Whether the consuming connection is up right now."""
        return self._supervisor.connected.is_set()

    @property
    def ready(self) -> bool:
        """Connected and consuming on every queue."""
        return (
            self.connected
            and bool(self.consumers)
            and all(consumer.consuming for consumer in self.consumers)
        )

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (a signal, or :meth:`request_stop`)."""
        return self._signals > 0

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
        bind_loop_thread(loop)
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        executor = self._executor = self._thread_pool()
        self.consumers = [self._consumer(registration) for registration in self.registrations]
        # publish_task in handlers (and anything else in this process) goes through our plugins.
        previous = activate(self.plugins)
        try:
            await self.plugins.startup(self.settings)
            try:
                await self._supervisor.start()
                logger.info("consuming from {} queue(s)", len(self.consumers))
                self.started.set()
                await self._stop.wait()
                await self._drain()
            finally:
                await self._close()
                await self.plugins.shutdown(self.settings)
                if executor is not None:
                    executor.shutdown(wait=False, cancel_futures=True)
        finally:
            activate(previous)

    def _thread_pool(self) -> ThreadPoolExecutor | None:
        # Each queue holds at most prefetch_count slots, a timed-out thread included, so
        # this many threads means no handler ever waits for one.
        sync_slots = sum(
            r.config.prefetch_count for r in self.registrations if r.config.has_sync_handlers
        )
        threads = self.settings.sync_handler_threads or sync_slots
        if not threads:
            return None
        return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rabbitworker-handler")

    def _consumer(self, registration: QueueRegistration) -> QueueConsumer:
        config = registration.config
        settler = Settler(
            config,
            self.plugins.message_hooks(),
            self._copies,
            copies_topology(self.topology, config),
            copy_timeout=self.settings.publish_timeout,
            ledger=self.ledger,
        )
        return QueueConsumer(
            config,
            self.plugins,
            settler,
            work_queue_topology(self.topology, config),
            max_message_bytes=self.settings.max_message_bytes,
            executor=self._executor,
            ledger=self.ledger,
        )

    async def _on_up(self, connection: AbstractConnection) -> None:
        """A new consuming connection: declare everything, then consume every queue."""
        node = self._supervisor.connector.current
        first, self._first_up = self._first_up, False
        try:
            channel = await connection.channel(publisher_confirms=False)
            await declare_topology(channel, self.topology)
            await channel.close()
            channel = await connection.channel(publisher_confirms=False)
            await self.ledger.declare(channel, self.settings.ledger_max_age_days)
            if not channel.is_closed:
                await channel.close()
            await asyncio.gather(*(consumer.attach(connection) for consumer in self.consumers))
        except CONNECT_ERRORS:
            raise
        except Exception as exc:
            if first:
                raise
            logger.error("[{}] could not set up again after reconnecting: {}", node, exc)
            # Not consuming on this connection: give it up, so the supervisor tries again
            # (backing off) instead of leaving the queues unconsumed until the next outage.
            raise RuntimeError(f"set-up failed on {node}: {exc}") from exc
        if first:
            logger.info(
                "connected to {}; declared {} exchange(s) and {} queue(s)",
                node,
                len(self.topology.exchanges),
                len(self.topology.queues),
            )
            for registration in self.registrations:
                config = registration.config
                logger.info(
                    "[{}] consuming: routing key {!r} on exchange {!r}, prefetch {}, handlers "
                    "{}, DLX {!r} → DLQ {!r} (plugin {})",
                    config.name,
                    config.routing_key,
                    config.exchange_name,
                    config.prefetch_count,
                    ", ".join(config.tasks),
                    config.dlx_exchange_name,
                    config.dlq_name,
                    registration.plugin.describe(),
                )
        else:
            logger.info(
                "reconnected to {}; declared again and consuming again on {} queue(s)",
                node,
                len(self.consumers),
            )
        self.plugins.connection_changed(connected=True, detail=f"connected to {node}")

    def _on_down(self, exc: BaseException | None) -> None:
        if self._stop.is_set():
            return
        reason = closed_reason(exc)
        self.plugins.connection_changed(connected=False, detail=reason)
        for consumer in self.consumers:
            consumer.lost(f"the broker connection was lost ({reason})")
        logger.warning(
            "lost the broker connection ({}); failing over to the next node. Messages in "
            "flight stay unacknowledged and will be delivered again",
            reason,
        )

    async def _drain(self) -> None:
        """Stop consuming everywhere at once, then let in-flight messages finish."""
        cancels = [consumer.stop_consuming() for consumer in self.consumers]
        results = await _bounded(
            cancels, min(CANCEL_BOUND, self.settings.shutdown_timeout or CANCEL_BOUND)
        )
        for consumer, result in zip(self.consumers, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning(
                    "[{}] could not cancel the consumer cleanly ({}); closing its channel will",
                    consumer.config.name,
                    closed_reason(result),
                )
        in_flight = sum(consumer.in_flight for consumer in self.consumers)
        if in_flight:
            logger.info("waiting for {} in-flight message(s) to finish", in_flight)
        idle: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(consumer.wait_idle() for consumer in self.consumers))
        )
        force: asyncio.Future[Any] = asyncio.ensure_future(self._force.wait())
        done, _ = await asyncio.wait(
            {idle, force},
            timeout=self.settings.shutdown_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        force.cancel()
        if idle in done:
            return
        abandoned = sum(consumer.abandon_in_flight() for consumer in self.consumers)
        logger.warning(
            "{} message(s) still running; left unacknowledged, the broker will deliver them again",
            abandoned,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ABANDON_GRACE):
                await asyncio.shield(idle)
        if not idle.done():
            idle.cancel()
            idle.add_done_callback(lambda future: future.cancelled() or future.exception())
            stuck = sum(consumer.report_stuck() for consumer in self.consumers)
            if stuck:
                logger.warning(
                    "{} handler(s) ignored their cancellation; leaving them behind", stuck
                )

    async def _close(self) -> None:
        """Note what the shutdown gives back as clean (before the channels close, so a
        host that receives it again knows), write pending acks, close every channel
        (abandoned messages go back to their queues, in place), then the connections.
        Every step is bounded."""
        left = [key for consumer in self.consumers for key in consumer.left_at_shutdown]
        if left:
            await _bounded([self.ledger.note(NoteKind.CLEAN, left)], 5.0)
        await _bounded([consumer.close() for consumer in self.consumers], 5.0)
        await _bounded([self._copies.close(), close_publishers()], 5.0)
        await self._supervisor.close()
        logger.info("stopped")


async def _bounded(steps: list[Any], within: float) -> list[Any]:
    """Run ``steps`` at once within one total ``within``; a step that failed or did not
    finish shows up as its exception (``TimeoutError``) in the result."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=within)
    for task in pending:
        task.cancel()
    results: list[Any] = []
    for task in tasks:
        if task in pending:
            results.append(TimeoutError(f"did not finish within {within:g} s"))
        elif task.cancelled():
            results.append(asyncio.CancelledError())
        else:
            results.append(task.exception() or task.result())
    return results
