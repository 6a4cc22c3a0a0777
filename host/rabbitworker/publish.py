"""``publish_task``: send a task message to the broker, confirmed and routed, or raise.

One connection and one confirming channel per event loop, opened on first use and shared
by every caller, so concurrent calls pipeline their confirms instead of queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
import weakref
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from loguru import logger

from rabbitworker.errors import PublishError, UnroutableMessageError
from rabbitworker.settings import HostSettings, mask_url

#: Failures where the broker connection or channel went away: worth another try.
_CONNECTION_ERRORS = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
)


AMQP_URL_ENV = "RABBITWORKER_AMQP_URL"


class TaskPublisher:
    """A lazily connected publisher bound to one broker URL on one event loop."""

    def __init__(self, amqp_url: str, *, timeout: float = 30.0, connect_timeout: float = 10.0):
        self.amqp_url = amqp_url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._lock = asyncio.Lock()

    async def publish(
        self,
        message_body: Any,
        routing_key: str,
        *,
        exchange_name: str = "tasks",
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Publish persistently with ``mandatory``; return the message id once confirmed."""
        try:
            body = orjson.dumps(message_body)
        except TypeError as exc:
            raise TypeError(f"message_body must be JSON-serialisable: {exc}") from exc
        message_id = message_id or uuid.uuid4().hex
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            timestamp=datetime.now(UTC),
            headers=headers,
        )
        try:
            exchange = self._ready_exchange(exchange_name)
            if exchange is not None:
                # The common case: connected, channel open. aiormq bounds the confirm wait.
                try:
                    await self._send(exchange, message, exchange_name, routing_key, self.timeout)
                    return message_id
                except _CONNECTION_ERRORS:
                    self._forget_channel()
            async with asyncio.timeout(self.timeout):
                await self._publish_until_sent(message, exchange_name, routing_key)
        except TimeoutError as exc:
            raise PublishError(
                f"no confirm from the broker within {self.timeout:g} s "
                f"(RABBITWORKER_PUBLISH_TIMEOUT) for {exchange_name!r}/{routing_key!r}: is it "
                "reachable? If it was stored after all, a retry will publish it twice."
            ) from exc
        return message_id

    async def _publish_until_sent(
        self, message: aio_pika.Message, exchange_name: str, routing_key: str
    ) -> None:
        """Publish; through a lost connection, wait for the reconnection and publish again
        (at-least-once: a message whose confirm was lost with the connection may be sent
        twice, never zero times)."""
        while True:
            try:
                exchange = await self._exchange(exchange_name)
                await self._send(exchange, message, exchange_name, routing_key, None)
                return
            except _CONNECTION_ERRORS as exc:
                self._forget_channel()
                logger.debug("publish interrupted ({!r}); retrying after reconnection", exc)
                await asyncio.sleep(0.2)

    async def _send(
        self,
        exchange: AbstractExchange,
        message: aio_pika.Message,
        exchange_name: str,
        routing_key: str,
        confirm_timeout: float | None,
    ) -> None:
        try:
            await exchange.publish(message, routing_key, mandatory=True, timeout=confirm_timeout)
        except aio_pika.exceptions.PublishError as exc:
            raise UnroutableMessageError(exchange_name, routing_key) from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            self._forget_channel()
            raise PublishError(
                f"exchange {exchange_name!r} does not exist on the broker. Start "
                "rabbitworker-host once so it declares its exchanges, or check exchange_name."
            ) from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishError(
                f"the broker refused the message for {exchange_name!r}/{routing_key!r} "
                f"({exc.frame}); it is not stored. Check the broker's logs (disk or memory alarm?)."
            ) from exc

    async def close(self) -> None:
        """Close the connection; the next publish opens a new one."""
        connection, self._connection = self._connection, None
        self._forget_channel()
        if connection is not None and not connection.is_closed:
            await connection.close()

    def _forget_channel(self) -> None:
        self._channel = None
        self._exchanges.clear()

    def _ready_exchange(self, name: str) -> AbstractExchange | None:
        """The exchange, if the channel is open and the exchange known; else ``None``."""
        exchange = self._exchanges.get(name)
        if exchange is not None and self._channel is not None and not self._channel.is_closed:
            return exchange
        return None

    async def _exchange(self, name: str) -> AbstractExchange:
        exchange = self._ready_exchange(name)
        if exchange is not None:
            return exchange
        async with self._lock:
            if self._connection is None or self._connection.is_closed:
                try:
                    self._connection = await aio_pika.connect_robust(
                        self.amqp_url,
                        timeout=self.connect_timeout,
                        client_properties={"connection_name": "rabbitworker publish_task"},
                    )
                except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                    raise PublishError(
                        f"cannot connect to {mask_url(self.amqp_url)}: {type(exc).__name__}: "
                        f"{exc}. Is RabbitMQ running? Set RABBITWORKER_AMQP_URL."
                    ) from exc
            if self._channel is None or self._channel.is_closed:
                self._forget_channel()
                # Between two reconnection attempts a robust connection has no transport
                # and channel() raises RuntimeError: wait for it (the caller's timeout
                # bounds the wait), and retry if it drops again in between.
                await self._connection.connected.wait()
                try:
                    self._channel = await self._connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                except RuntimeError as exc:
                    raise ConnectionError(f"the broker connection dropped: {exc}") from exc
            exchange = self._exchanges.get(name)
            if exchange is None:
                exchange = await self._channel.get_exchange(name, ensure=False)
                self._exchanges[name] = exchange
            return exchange


_publishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, TaskPublisher]] = (
    weakref.WeakKeyDictionary()
)


#: Per loop, the started async generator that closes its publishers (see _close_with_loop).
_loop_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None]] = (
    weakref.WeakKeyDictionary()
)


async def _closer() -> AsyncGenerator[None]:
    try:
        yield
    finally:
        # Best effort, bounded: the script is over, whatever state the broker is in.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await close_publishers()


async def _close_with_loop() -> None:
    """Close this loop's publishers when ``asyncio.run()`` ends, while the loop still runs.

    A script that never calls :func:`close_publishers` would otherwise leave the connection
    to be torn down after the loop closed, printing tracebacks on exit. asyncio has no
    loop-shutdown callback, but ``asyncio.run()`` finalises every started async generator
    (``loop.shutdown_asyncgens()``) before it closes the loop: this generator is that hook.
    """
    loop = asyncio.get_running_loop()
    if loop not in _loop_closers:
        closer = _closer()
        await anext(closer)
        _loop_closers[loop] = closer


def get_publisher(settings: HostSettings | None = None) -> TaskPublisher:
    """The shared publisher of the running loop for ``settings.amqp_url`` (default: the
    host's settings, read once per value of ``RABBITWORKER_AMQP_URL``, not on every call)."""
    by_url = _publishers.setdefault(asyncio.get_running_loop(), {})
    key = settings.amqp_url if settings else "env:" + os.environ.get(AMQP_URL_ENV, "")
    publisher = by_url.get(key)
    if publisher is None:
        settings = settings or HostSettings()
        publisher = TaskPublisher(
            settings.amqp_url,
            timeout=settings.publish_timeout,
            connect_timeout=settings.connect_timeout,
        )
        by_url[key] = publisher
    return publisher


async def publish_task(
    message_body: dict[str, Any],
    routing_key: str,
    *,
    exchange_name: str = "tasks",
    message_id: str | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """Publish ``message_body`` as persistent JSON and wait for the broker's confirm.

    Connects on first use with ``RABBITWORKER_AMQP_URL``; later calls on the same event
    loop reuse that connection.

    :returns: the message id (generated unless given).
    :raises UnroutableMessageError: no queue is bound to ``exchange_name`` with ``routing_key``.
    :raises PublishError: the broker is unreachable, the exchange does not exist, or the
        broker refused the message.
    """
    await _close_with_loop()
    return await get_publisher().publish(
        message_body,
        routing_key,
        exchange_name=exchange_name,
        message_id=message_id,
        headers=headers,
    )


async def close_publishers() -> None:
    """Close the running loop's publisher connections (the host calls this on shutdown)."""
    by_url = _publishers.pop(asyncio.get_running_loop(), {})
    for publisher in by_url.values():
        await publisher.close()
