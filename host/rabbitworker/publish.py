"""Publishing with confirms: ``publish_task``, and the host's own copies (retries, dead
letters) through the same :class:`ConfirmingPublisher`.

A publish either returns (the broker confirmed it stored the message in a queue) or raises
one of two kinds of error, so a caller knows whether a retry is safe:
:class:`~rabbitworker.errors.PublishNotSentError` (not stored; unroutable, refused, no such
exchange, or never written before the deadline) and
:class:`~rabbitworker.errors.PublishUncertainError` (written, but the confirm was lost).
Inside its one deadline a publisher rides out a lost connection by failing over and
publishing again: at least once, never zero times. Every publish is wrapped in the
``rabbitworker_publish_context`` hooks (the tracing plugin's PRODUCER span).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import uuid
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiormq
import orjson
from aiormq.abc import AbstractChannel, AbstractConnection
from loguru import logger
from pamqp.commands import Basic

from rabbitworker import delays, plugins
from rabbitworker.broker import Connector
from rabbitworker.errors import (
    BrokerConnectionError,
    BrokerTopologyMismatchError,
    ExchangeNotFoundError,
    PublishNotSentError,
    PublishRefusedError,
    PublishUncertainError,
    UnroutableMessageError,
)
from rabbitworker.settings import HostSettings
from rabbitworker.topology import declare_topology, delay_topology

T = TypeVar("T")

PERSISTENT = 2

#: The channel or connection went away under a publish: worth another try.
_LOST = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    RuntimeError,
)


def _refusal(
    error: aiormq.exceptions.ChannelClosed, exchange: str, where: str
) -> PublishNotSentError | None:
    """The definitive answer a channel error gives a publish to ``exchange``, or ``None``
    when the error is about another publish pipelined on the same channel (which may have
    closed it after this one was stored). The broker names the exchange in its text:
    ``NOT_FOUND - no exchange 'x' in vhost 'v'``, ``access to exchange 'x' ... refused``."""
    text = str(error)
    names_it = f"exchange '{exchange or 'amq.default'}'" in text
    if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity) and names_it:
        return ExchangeNotFoundError(exchange)
    if isinstance(error, aiormq.exceptions.ChannelAccessRefused) and names_it:
        return PublishRefusedError(
            f"the broker refused the message for {where}: {error}; it is not stored (this "
            "user's permissions do not allow writing to that exchange)"
        )
    if isinstance(error, aiormq.exceptions.ChannelPreconditionFailed) and "size" in text:
        return PublishRefusedError(
            f"the broker refused the message for {where}: {error}; it is not stored (a "
            "message over the broker's max_message_size)"
        )
    return None


class ConfirmingPublisher:
    """One confirming channel on a lazily opened connection to one of the broker's nodes.

    Concurrent publishes pipeline their confirms on the one channel. Two publishes with the
    same message id are never in flight at once: a returned (unroutable) message is matched
    to its publish by id, so that keeps every caller's answer its own.

    :param hooks: whose ``rabbitworker_publish_context`` wraps each publish (the host's
        copies: the host's plugins); by default the :func:`~rabbitworker.plugins.active`
        plugins at the time of the publish.
    """

    def __init__(
        self,
        connector: Connector,
        *,
        timeout: float,
        hooks: plugins.MessageHooks | None = None,
    ) -> None:
        self.connector = connector
        self.timeout = timeout
        self._hooks = hooks
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._ids: dict[str, asyncio.Event | None] = {}
        self._closed = False

    @property
    def connection(self) -> AbstractConnection | None:
        return self._connection

    async def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Basic.Properties,
        timeout: float | None = None,  # noqa: ASYNC109 - one deadline for the whole publish
        traced_as: tuple[str, str] | None = None,
    ) -> None:
        """Publish persistently with ``mandatory`` and wait for the confirm.

        :param traced_as: the exchange and routing key the publish hooks are told about, when
            the message goes there by way of another (a delayed message, via the cascade).

        :raises UnroutableMessageError: no queue is bound to receive it.
        :raises ExchangeNotFoundError: the exchange does not exist.
        :raises PublishRefusedError: the broker nacked it.
        :raises PublishNotSentError: not written before the deadline (or another refusal).
        :raises PublishUncertainError: written, confirm not received before the deadline.
        """
        if not properties.message_id:
            properties.message_id = uuid.uuid4().hex
        message_id = properties.message_id
        headers = properties.headers if properties.headers is not None else {}
        hooks = self._hooks or plugins.active().message_hooks()
        hook_exchange, hook_routing_key = traced_as or (exchange, routing_key)
        with hooks.publish_context(hook_exchange, hook_routing_key, message_id, headers):
            if headers and properties.headers is None:
                properties.headers = headers
            await self._publish(body, exchange, routing_key, properties, message_id, timeout)

    async def _publish(
        self,
        body: bytes,
        exchange: str,
        routing_key: str,
        properties: Basic.Properties,
        message_id: str,
        timeout: float | None,  # noqa: ASYNC109
    ) -> None:
        deadline = self.timeout if timeout is None else timeout
        where = f"{exchange!r}/{routing_key!r}"
        maybe_stored = False
        writing = False
        last_error: BaseException | None = None
        try:
            async with asyncio.timeout(deadline):
                await self._take_turn(message_id)
                try:
                    while True:
                        try:
                            channel = await self._ready_channel()
                        except (BrokerConnectionError, *_LOST) as exc:
                            # Not connected, or the connection closed while a channel was
                            # being opened: nothing of this message was written yet.
                            last_error = exc
                            await asyncio.sleep(0.2)
                            continue
                        writing = True
                        try:
                            await channel.basic_publish(
                                body,
                                exchange=exchange,
                                routing_key=routing_key,
                                properties=properties,
                                mandatory=True,
                            )
                            return
                        except aiormq.exceptions.PublishError as exc:
                            raise UnroutableMessageError(exchange, routing_key) from exc
                        except aiormq.exceptions.DeliveryError as exc:
                            raise PublishRefusedError(
                                f"the broker refused the message for {where} ({exc.frame}); "
                                "it is not stored. A queue at its x-max-length with "
                                "overflow reject-publish, or a broker alarm?"
                            ) from exc
                        except aiormq.exceptions.ChannelClosed as exc:
                            # A channel error closes the channel for every publish on it:
                            # it answers this one only if it names this one's exchange.
                            self._forget(channel)
                            refusal = _refusal(exc, exchange, where)
                            if refusal is not None:
                                raise refusal from exc
                            last_error = exc
                            maybe_stored = True
                        except aiormq.exceptions.ChannelInvalidStateError as exc:
                            # Closed before anything was written: plainly not sent.
                            last_error = exc
                            self._forget(channel)
                        except _LOST as exc:
                            last_error = exc
                            maybe_stored = True
                            self._forget(channel)
                        finally:
                            writing = False
                        logger.debug(
                            "publish to {} interrupted ({!r}); trying again", where, last_error
                        )
                        await asyncio.sleep(0.05)
                finally:
                    self._end_turn(message_id)
        except TimeoutError as exc:
            cause = (
                f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            )
            if maybe_stored or writing:
                raise PublishUncertainError(
                    f"message {message_id} to {where} was sent but not confirmed within "
                    f"{deadline:g} s{cause}: it may be stored. Publishing it again may "
                    "deliver it twice."
                ) from exc
            raise PublishNotSentError(
                f"message {message_id} to {where} was not sent within {deadline:g} s "
                f"(RABBITWORKER_PUBLISH_TIMEOUT){cause}: is the broker reachable, or blocked by "
                "a memory or disk alarm? It is not stored; publishing it again is safe."
            ) from exc

    async def _take_turn(self, message_id: str) -> None:
        # The event exists only once a second publish of the same id waits (rare).
        while message_id in self._ids:
            waiting = self._ids[message_id]
            if waiting is None:
                waiting = self._ids[message_id] = asyncio.Event()
            await waiting.wait()
        self._ids[message_id] = None

    def _end_turn(self, message_id: str) -> None:
        waiting = self._ids.pop(message_id, None)
        if waiting is not None:
            waiting.set()

    def _forget(self, channel: AbstractChannel) -> None:
        if self._channel is channel:
            self._channel = None
        connection = self._connection
        if connection is not None and connection.is_closed:
            self._connection = None

    async def _ready_channel(self) -> AbstractChannel:
        """The open channel, connecting (failing over) and opening it if needed; waits
        while the broker blocks the connection (an alarm), so nothing is written then."""
        channel = self._channel
        connection = self._connection
        if channel is None or channel.is_closed or connection is None or connection.is_closed:
            async with self._lock:
                if self._closed:
                    raise PublishNotSentError("the publisher is closed")
                channel = await self._open()
        assert self._connection is not None
        await self._connection.ready()
        return channel

    async def _open(self) -> AbstractChannel:
        if self._connection is None or self._connection.is_closed:
            self._channel = None
            self._connection = await self.connector.connect_once()
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        return self._channel

    async def run_on_channel(
        self, work: Callable[[AbstractChannel], Awaitable[T]], within: float
    ) -> T:
        """Run ``work`` on a throwaway channel of this publisher's connection (declaring
        what a copy needs), so a channel error there never closes the publishing channel."""
        async with asyncio.timeout(within):
            async with self._lock:
                if self._connection is None or self._connection.is_closed:
                    self._channel = None
                    self._connection = await self.connector.connect_once()
                connection = self._connection
            channel = await connection.channel(publisher_confirms=False)
            try:
                return await work(channel)
            finally:
                if not channel.is_closed:
                    with contextlib.suppress(Exception):
                        await channel.close()

    async def close(self) -> None:
        """Close the connection; a later publish opens a new one."""
        async with self._lock:
            connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await connection.close()


def task_properties(
    *,
    message_id: str | None = None,
    headers: dict[str, Any] | None = None,
    priority: int | None = None,
) -> Basic.Properties:
    """The AMQP properties of a task message: persistent JSON with an id and a timestamp."""
    return Basic.Properties(
        content_type="application/json",
        delivery_mode=PERSISTENT,
        message_id=message_id or uuid.uuid4().hex,
        timestamp=datetime.now(UTC),
        # A copy: publish hooks may add headers, and the caller's dict stays as it was.
        headers=dict(headers) if headers else None,
        priority=priority,
    )


def encode(message_body: Any) -> bytes:
    try:
        return orjson.dumps(message_body)
    except TypeError as exc:
        raise TypeError(f"message_body must be JSON-serialisable: {exc}") from exc


class TaskPublisher:
    """``publish_task``'s engine: a :class:`ConfirmingPublisher` for one set of settings."""

    def __init__(self, settings: HostSettings, *, role: str = "rabbitworker publish_task") -> None:
        self.settings = settings
        self._publisher = ConfirmingPublisher(
            Connector(
                settings.amqp_urls,
                role=role,
                connect_timeout=settings.connect_timeout,
                heartbeat=settings.heartbeat,
            ),
            timeout=settings.publish_timeout,
        )
        #: The delay destinations declared on the publisher's current connection.
        self._delays_ready: set[delays.Destination] = set()
        self._delays_connection: AbstractConnection | None = None
        self._delays_lock = asyncio.Lock()

    @property
    def publisher(self) -> ConfirmingPublisher:
        return self._publisher

    @property
    def connection(self) -> AbstractConnection | None:
        """The broker connection, once the first publish opened it."""
        return self._publisher.connection

    async def publish(
        self,
        message_body: Any,
        routing_key: str,
        *,
        exchange_name: str = "tasks",
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
        priority: int | None = None,
        delay: float | None = None,
    ) -> str:
        """Publish persistently with ``mandatory``; return the message id once confirmed.

        With ``delay``, the message is stored in the delay cascade (:mod:`rabbitworker.delays`)
        instead, declared on first use, and reaches ``exchange_name`` no sooner than that.
        """
        seconds = delays.delay_seconds(delay) if delay is not None else 0
        body = encode(message_body)
        properties = task_properties(message_id=message_id, headers=headers, priority=priority)
        if not seconds:
            await self._publisher.publish(
                body, exchange=exchange_name, routing_key=routing_key, properties=properties
            )
            return str(properties.message_id)
        destination = delays.Destination(exchange_name, routing_key)
        due_at = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
        properties.headers = {**(properties.headers or {}), delays.HEADER_DUE_AT: due_at}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.publish_timeout
        for attempt in range(2):
            await self._prepare_delays(destination, deadline, again=attempt > 0)
            try:
                await self._publisher.publish(
                    body,
                    exchange=delays.ENTRY_EXCHANGE,
                    routing_key=delays.routing_key(seconds, destination),
                    properties=properties,
                    timeout=max(deadline - loop.time(), 0.001),
                    traced_as=(exchange_name, routing_key),
                )
            except (ExchangeNotFoundError, UnroutableMessageError) as exc:
                if attempt or getattr(exc, "exchange", None) != delays.ENTRY_EXCHANGE:
                    raise
                # Someone deleted part of the cascade since this connection declared it.
                logger.warning("the delay queues are gone; declaring them again")
                continue
            break
        return str(properties.message_id)

    async def _prepare_delays(
        self, destination: delays.Destination, deadline: float, *, again: bool
    ) -> None:
        """Declare the cascade and ``destination``'s landing queue, once per connection.

        :raises ExchangeNotFoundError: ``destination``'s exchange does not exist.
        :raises PublishNotSentError: not declared before the deadline.
        """
        async with self._delays_lock:
            if again or self._publisher.connection is not self._delays_connection:
                self._delays_ready.clear()
            if destination in self._delays_ready:
                return
            cascade = not self._delays_ready

            async def declare(channel: AbstractChannel) -> None:
                if destination.exchange:
                    try:
                        await channel.exchange_declare(destination.exchange, passive=True)
                    except aiormq.exceptions.ChannelNotFoundEntity as exc:
                        raise ExchangeNotFoundError(destination.exchange) from exc
                await declare_topology(channel, delay_topology(destination, cascade=cascade))

            loop = asyncio.get_running_loop()
            while True:
                try:
                    await self._publisher.run_on_channel(declare, within=deadline - loop.time())
                    break
                except BrokerTopologyMismatchError as exc:
                    raise PublishNotSentError(
                        "a delay queue or exchange exists on the broker with other settings "
                        f"than this version of rabbitworker declares ({exc.__cause__}); nothing "
                        f"is stored. Move the messages out of the {delays.PREFIX}* queues "
                        "named there (a shovel) and delete them, so they can be declared anew"
                    ) from exc
                except aiormq.exceptions.ChannelAccessRefused as exc:
                    raise PublishRefusedError(
                        f"this user may not declare the delay queues ({exc}); nothing is "
                        "stored. Delayed publishing needs the configure, write and read "
                        f"permissions on the names starting {delays.PREFIX!r}, and write on "
                        f"{destination.exchange!r}"
                    ) from exc
                except (BrokerConnectionError, *_LOST) as exc:
                    if loop.time() + 0.2 >= deadline:
                        raise self._not_declared(destination, f"last error: {exc}") from exc
                    await asyncio.sleep(0.2)
                except TimeoutError as exc:
                    raise self._not_declared(destination, "is the broker reachable?") from exc
            self._delays_connection = self._publisher.connection
            self._delays_ready.add(destination)

    def _not_declared(self, destination: delays.Destination, cause: str) -> PublishNotSentError:
        return PublishNotSentError(
            f"the delay queues for {destination.exchange!r}/{destination.routing_key!r} could "
            f"not be declared within {self.settings.publish_timeout:g} s "
            f"(RABBITWORKER_PUBLISH_TIMEOUT; {cause}). Nothing is stored; publishing again is "
            "safe."
        )

    async def close(self) -> None:
        await self._publisher.close()


_publishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, TaskPublisher]] = (
    weakref.WeakKeyDictionary()
)

#: Per loop, the started async generator that closes its publishers (see _close_with_loop).
_loop_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None]] = (
    weakref.WeakKeyDictionary()
)

AMQP_URL_ENV = "RABBITWORKER_AMQP_URL"


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

    asyncio has no loop-shutdown callback, but ``asyncio.run()`` finalises every started
    async generator (``loop.shutdown_asyncgens()``) before it closes the loop: this
    generator is that hook, so scripts that never call :func:`close_publishers` exit cleanly.
    """
    loop = asyncio.get_running_loop()
    if loop not in _loop_closers:
        closer = _closer()
        await anext(closer)
        _loop_closers[loop] = closer


def get_publisher(settings: HostSettings | None = None) -> TaskPublisher:
    """The shared publisher of the running loop for ``settings`` (default: the host's
    settings, read once per value of ``RABBITWORKER_AMQP_URL``, not on every call)."""
    by_url = _publishers.setdefault(asyncio.get_running_loop(), {})
    key = settings.amqp_url if settings else "env:" + os.environ.get(AMQP_URL_ENV, "")
    publisher = by_url.get(key)
    if publisher is None:
        publisher = by_url[key] = TaskPublisher(settings or HostSettings())
    return publisher


async def publish_task(
    message_body: dict[str, Any],
    routing_key: str,
    *,
    exchange_name: str = "tasks",
    message_id: str | None = None,
    headers: dict[str, Any] | None = None,
    priority: int | None = None,
    delay: float | None = None,
) -> str:
    """Publish ``message_body`` as persistent JSON and wait for the broker's confirm.

    Connects on first use with ``RABBITWORKER_AMQP_URL`` (one node, or several separated
    by ``;``); later calls on the same event loop reuse that connection. Everything,
    reconnecting included, happens within ``RABBITWORKER_PUBLISH_TIMEOUT``.

    :param priority: for queues with ``max_priority``: higher is delivered first.
    :param delay: seconds (rounded up to whole seconds, at most 48 days) the message waits
        in the broker before it reaches its queue; see :mod:`rabbitworker.delays`.
    :returns: the message id (generated unless given).
    :raises UnroutableMessageError: no queue is bound to ``exchange_name`` with ``routing_key``.
    :raises PublishNotSentError: not stored (no such exchange, refused, broker unreachable
        or blocked throughout): safe to publish again.
    :raises PublishUncertainError: sent, but the confirm was lost: it may be stored.
    """
    await _close_with_loop()
    return await get_publisher().publish(
        message_body,
        routing_key,
        exchange_name=exchange_name,
        message_id=message_id,
        headers=headers,
        priority=priority,
        delay=delay,
    )


async def close_publishers() -> None:
    """Close the running loop's publisher connections (the host calls this on shutdown)."""
    by_url = _publishers.pop(asyncio.get_running_loop(), {})
    for publisher in by_url.values():
        await publisher.close()


class _SyncPublisher:
    """``publish_task_sync``'s engine: one event loop in a daemon thread of this process,
    one connection on it, shared by every calling thread. A forked child (gunicorn, celery
    prefork, multiprocessing) gets its own on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="rabbitworker-publish", daemon=True
                )
                thread.start()
                self._loop, self._pid = loop, os.getpid()
                atexit.register(self.close)
            return self._loop

    def close(self) -> None:
        """Close the connection and stop the thread (at exit; also callable directly)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None or not loop.is_running():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_publishers(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)


_sync = _SyncPublisher()


def publish_task_sync(
    message_body: dict[str, Any],
    routing_key: str,
    *,
    exchange_name: str = "tasks",
    message_id: str | None = None,
    headers: dict[str, Any] | None = None,
    priority: int | None = None,
    delay: float | None = None,
) -> str:
    """:func:`publish_task` for synchronous code (Django and Flask views, scripts, threads):
    the same arguments, confirms, deadline and errors. Safe to call from many threads at
    once; they share one connection per process.

    :returns: the message id once the broker confirmed the message.
    """
    future = asyncio.run_coroutine_threadsafe(
        _publish_on_the_loop(
            message_body,
            routing_key,
            exchange_name=exchange_name,
            message_id=message_id,
            headers=headers,
            priority=priority,
            delay=delay,
        ),
        _sync.loop(),
    )
    return future.result()


async def _publish_on_the_loop(message_body: Any, routing_key: str, **options: Any) -> str:
    # get_publisher() must run on the publishing loop: publishers belong to one loop.
    return await get_publisher().publish(message_body, routing_key, **options)


def close_sync_publisher() -> None:
    """Close ``publish_task_sync``'s connection (it is also closed at exit)."""
    _sync.close()
