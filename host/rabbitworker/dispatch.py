"""Consuming and dispatch: the one place where a message is decoded, handled, and acked,
retried or dead-lettered.

Each queue gets a :class:`QueueConsumer` on its own channel whose ``basic.qos`` is the
queue's ``prefetch_count``. aiormq runs every delivery in its own task, so the broker's
prefetch window is exactly the number of handlers running at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import orjson
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    ConsumerTag,
)
from loguru import logger
from pydantic import ValidationError

from rabbitworker.acks import AckBatcher
from rabbitworker.config import QueueConfig
from rabbitworker.context import TaskContext, _current
from rabbitworker.errors import InvalidPayloadError, PermanentError
from rabbitworker.events import DeadLetterReason, Delivery, Outcome, Settlement
from rabbitworker.plugins import HostPlugins
from rabbitworker.topology import queue_arguments, retry_queue_name

#: Header names the host writes. ``x-first-death-*`` follow RabbitMQ's own names.
HEADER_QUEUE = "x-rabbitworker-queue"
HEADER_REASON = "x-rabbitworker-reason"
HEADER_ERROR = "x-rabbitworker-error"
HEADER_EXCEPTION_TYPE = "x-rabbitworker-exception-type"
HEADER_EXCEPTION_MESSAGE = "x-rabbitworker-exception-message"
HEADER_TASK = "x-rabbitworker-task"
HEADER_DEAD_LETTERED_AT = "x-rabbitworker-dead-lettered-at"
HEADER_ATTEMPT = "x-rabbitworker-attempt"
HEADER_ATTEMPTS = "x-rabbitworker-attempts"
HEADER_REDELIVERIES = "x-rabbitworker-redeliveries"

#: Headers that describe past failures (ours and RabbitMQ's); a replayed message drops them.
FAILURE_HEADERS = frozenset(
    {
        HEADER_QUEUE,
        HEADER_REASON,
        HEADER_ERROR,
        HEADER_EXCEPTION_TYPE,
        HEADER_EXCEPTION_MESSAGE,
        HEADER_TASK,
        HEADER_DEAD_LETTERED_AT,
        HEADER_ATTEMPT,
        HEADER_ATTEMPTS,
        HEADER_REDELIVERIES,
        "x-first-death-queue",
        "x-first-death-reason",
        "x-first-death-exchange",
        "x-death",
    }
)

#: Content types a JSON body may come with: JSON itself, and what generic clients send when
#: they say nothing precise. Anything else declared (XML, HTML, msgpack, ...) is a wrong type.
JSON_CONTENT_TYPES = frozenset(
    {
        "application/json",
        "text/json",
        "text/plain",
        "application/octet-stream",
        "binary/octet-stream",
    }
)
_MAX_HEADER_TEXT = 4096


class _Failure(Exception):
    """A message that cannot be handled as it is: carries the dead-letter reason."""

    def __init__(self, reason: DeadLetterReason, detail: str, exc: BaseException | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.exc = exc


def _is_json_content_type(content_type: str | None) -> bool:
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_CONTENT_TYPES or media.endswith("+json")


def decode_task(body: bytes, content_type: str | None, max_bytes: int) -> dict[str, Any]:
    """Turn a body into a task message, or raise :class:`_Failure` naming what is wrong."""
    if len(body) > max_bytes:
        raise _Failure(
            DeadLetterReason.TOO_LARGE,
            f"body is {len(body)} bytes, above RABBITWORKER_MAX_MESSAGE_BYTES={max_bytes}",
        )
    if not _is_json_content_type(content_type):
        raise _Failure(
            DeadLetterReason.WRONG_CONTENT_TYPE,
            f"content type {content_type!r} is not JSON; publish with application/json",
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as utf8_error:
            raise _Failure(
                DeadLetterReason.INVALID_UTF8, f"body is not UTF-8: {utf8_error}"
            ) from None
        raise _Failure(DeadLetterReason.INVALID_JSON, f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Failure(
            DeadLetterReason.NOT_AN_OBJECT,
            f"body is a JSON {type(data).__name__}, not an object with a 'task' field",
        )
    task = data.get("task")
    if task is None:
        raise _Failure(DeadLetterReason.MISSING_TASK, "body has no 'task' field")
    if not isinstance(task, str):
        raise _Failure(
            DeadLetterReason.INVALID_TASK,
            f"'task' must be a string, got {type(task).__name__}",
        )
    return data


def _int_header(headers: dict[str, Any], name: str, default: int) -> int:
    value = headers.get(name, default)
    try:
        return max(int(value), default)
    except (TypeError, ValueError):
        return default


class QueueConsumer:
    """Consumes one queue and settles each of its messages exactly once."""

    def __init__(
        self,
        config: QueueConfig,
        channel: AbstractChannel,
        plugins: HostPlugins,
        *,
        max_message_bytes: int,
        dead_letter_exchange: AbstractExchange | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.config = config
        self._channel = channel
        self._max_bytes = max_message_bytes
        self._max_attempts = 1 + config.max_retries
        self._plugins = plugins
        self._hooks = plugins.message_hooks()
        self._invokers = {
            task: spec.invoker(executor) for task, spec in config.handler_specs.items()
        }
        self._known_tasks = ", ".join(sorted(self._invokers))
        self._track_redeliveries = config.queue_type == "classic"
        self._queue: AbstractQueue | None = None
        self._dlx: AbstractExchange | None = dead_letter_exchange
        self._consumer_tag: ConsumerTag | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._acks = AckBatcher(config.name)
        # Handler timeouts: one watchdog per queue instead of a timer per message.
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._timed_out: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._watch_interval = min(1.0, config.handler_timeout / 20)
        self._consuming = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """How many messages of this queue are being handled right now."""
        return len(self._in_flight)

    @property
    def consuming(self) -> bool:
        """Whether messages of this queue are being consumed right now."""
        return self._consuming

    async def start(self) -> None:
        """Set the channel's QoS (per consumer, never global) and start consuming."""
        config = self.config
        await self._channel.set_qos(prefetch_count=config.prefetch_count)
        # Declared and bound again on this robust channel (the topology module declared
        # them already), so that aio-pika restores the queue and its binding on reconnect,
        # and when the queue is deleted under a running host.
        exchange = await self._channel.declare_exchange(
            config.exchange_name, ExchangeType(config.exchange_type), durable=True
        )
        self._queue = await self._channel.declare_queue(
            config.name, durable=True, arguments=queue_arguments(config)
        )
        await self._queue.bind(exchange, config.routing_key)
        self._dlx = await self._channel.get_exchange(config.dlx_exchange_name, ensure=False)
        self._consumer_tag = await self._queue.consume(self.handle)
        await self._watch_cancellation()
        self._notify_consumer(True, f"consuming with prefetch {config.prefetch_count}")

    async def _watch_cancellation(self) -> None:
        """Hear about the broker cancelling this consumer (its queue was deleted)."""
        underlay = await self._channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_broker_cancel)

    def _on_broker_cancel(self, _: Any) -> None:
        self._notify_consumer(False, "the broker cancelled the consumer (queue deleted?)")
        asyncio.get_running_loop().create_task(self._await_restoration())

    async def _await_restoration(self) -> None:
        """aio-pika re-declares the queue and consumes again; report when it has."""
        tag = self._consumer_tag
        while tag is not None and self._consumer_tag == tag:
            underlay = await self._channel.get_underlay_channel()
            if tag in getattr(underlay, "consumers", {}):
                logger.info("[{}] queue re-declared and consumed again", self.config.name)
                self._notify_consumer(True, "consuming again after the broker cancelled it")
                return
            await asyncio.sleep(0.2)

    def connection_lost(self) -> None:
        """The connection went down: nothing is consumed until it is restored."""
        self._notify_consumer(False, "the broker connection was lost")

    async def restored(self) -> None:
        """Called after a reconnection: the robust channel consumes again on a new channel."""
        await self._watch_cancellation()
        self._notify_consumer(True, "consuming again after reconnecting")

    async def stop_consuming(self) -> None:
        """Ask the broker for no more messages; those in flight go on."""
        if self._queue is not None and self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            self._notify_consumer(False, "stopping")
            await self._queue.cancel(tag)

    async def wait_idle(self) -> None:
        """Return once no message of this queue is being handled."""
        await self._idle.wait()

    async def _enforce_timeouts(self) -> None:
        """Cancel handlers past their deadline; ``_process`` turns that into a timeout."""
        while True:
            await asyncio.sleep(self._watch_interval)
            now = time.monotonic()
            for task, deadline in list(self._deadlines.items()):
                if now >= deadline and task not in self._timed_out:
                    self._timed_out.add(task)
                    task.cancel()

    async def flush_acks(self) -> None:
        """Write the acks still pending (call before closing the channel)."""
        await self._acks.drain()

    def close(self) -> None:
        """Stop the timeout watchdog (after the last message was settled or abandoned)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def abandon_in_flight(self) -> int:
        """Cancel the handlers still running; their messages stay unacked (redelivered)."""
        for task in self._in_flight:
            task.cancel()
        return len(self._in_flight)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Settle one delivered message: the consumer callback, also used by
        :mod:`rabbitworker.testing` to run the same path without a broker."""
        # First, before any await: no multiple ack may cover this message until it is done.
        self._acks.delivered(message)
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._idle.clear()
        headers = message.headers or {}
        delivery = Delivery(
            self.config.name,
            None,
            message.message_id,
            bool(message.redelivered),
            headers,
            _int_header(headers, HEADER_ATTEMPT, 1),
        )
        try:
            await self._process(message, delivery, task)
        except asyncio.CancelledError:
            self._acks.forget(message)
            self._hooks.settled(
                delivery,
                Outcome(
                    Settlement.UNSETTLED,
                    0.0,
                    detail="the host stopped before the message was settled",
                ),
            )
            raise
        finally:
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()

    async def _process(
        self, message: AbstractIncomingMessage, delivery: Delivery, current: asyncio.Task[Any]
    ) -> None:
        config = self.config
        headers = delivery.headers
        started = time.perf_counter()
        if message.redelivered and self._track_redeliveries:
            await self._count_redelivery(message, delivery, started)
            return
        try:
            body = decode_task(message.body, message.content_type, self._max_bytes)
            delivery.task = task_name = body["task"]
            invoker = self._invokers.get(task_name)
            if invoker is None:
                raise _Failure(
                    DeadLetterReason.UNKNOWN_TASK,
                    f"no handler for task {task_name!r} on queue {config.name!r} "
                    f"(it handles: {self._known_tasks})",
                )
        except _Failure as bad_input:
            self._hooks.received(delivery)
            await self._dead_letter(message, delivery, started, bad_input)
            return
        self._hooks.received(delivery)
        token = _current.set(
            TaskContext(
                config.name,
                task_name,
                message.message_id,
                delivery.attempt,
                self._max_attempts,
                delivery.redelivered,
                headers,
            )
        )
        self._deadlines[current] = time.monotonic() + config.handler_timeout
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._enforce_timeouts())
        try:
            result = await invoker(body)
        except asyncio.CancelledError:
            if current not in self._timed_out:
                raise
            self._timed_out.discard(current)
            current.uncancel()
            timed_out = _Failure(
                DeadLetterReason.TIMEOUT,
                f"handler did not finish within handler_timeout={config.handler_timeout:g} s",
                TimeoutError(f"handler_timeout={config.handler_timeout:g} s"),
            )
            await self._fail(message, delivery, started, timed_out)
            return
        except Exception as exc:
            logger.opt(exception=exc).debug(
                "[{}] handler for task {} raised", config.name, task_name
            )
            await self._fail(message, delivery, started, self._classify(exc))
            return
        finally:
            _current.reset(token)
            self._deadlines.pop(current, None)
        self._acks.ack(message)
        self._hooks.settled(
            delivery, Outcome(Settlement.ACKED, time.perf_counter() - started, result=result)
        )

    @staticmethod
    def _classify(exc: Exception) -> _Failure:
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ValidationError | InvalidPayloadError):
            return _Failure(DeadLetterReason.INVALID_PAYLOAD, detail, exc)
        if isinstance(exc, PermanentError):
            return _Failure(DeadLetterReason.PERMANENT_ERROR, detail, exc)
        return _Failure(DeadLetterReason.HANDLER_ERROR, detail, exc)

    async def _fail(
        self,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        started: float,
        failure: _Failure,
    ) -> None:
        """A handler failed: retry later if the queue allows it, else dead-letter."""
        if failure.reason.retryable and delivery.attempt < self._max_attempts:
            await self._retry(message, delivery, started, failure)
        else:
            await self._dead_letter(message, delivery, started, failure)

    async def _retry(
        self,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        started: float,
        failure: _Failure,
    ) -> None:
        """Park a copy in the delay queue (the broker returns it after the delay), then ack."""
        delay = self.config.retry_delay(delivery.attempt)
        headers = dict(delivery.headers)
        headers[HEADER_ATTEMPT] = delivery.attempt + 1
        headers[HEADER_REASON] = failure.reason.value
        headers[HEADER_ERROR] = failure.detail[:_MAX_HEADER_TEXT]
        target = retry_queue_name(self.config, delay)
        outcome = Outcome(
            Settlement.RETRIED,
            time.perf_counter() - started,
            failure.reason,
            failure.detail,
            retry_in=delay,
        )
        await self._publish_then_ack(
            message, self._channel.default_exchange, target, headers, delivery, outcome
        )

    async def _count_redelivery(
        self, message: AbstractIncomingMessage, delivery: Delivery, started: float
    ) -> None:
        """A redelivered message on a classic queue: its worker died or lost its channel.

        Classic queues keep no delivery count, so the host keeps its own in a header:
        requeue a counted copy at the tail, or dead-letter once ``delivery_limit`` is passed.
        Quorum queues do this on the broker (``x-delivery-limit``).
        """
        redeliveries = _int_header(delivery.headers, HEADER_REDELIVERIES, 0) + 1
        if redeliveries > self.config.delivery_limit:
            self._hooks.received(delivery)
            failure = _Failure(
                DeadLetterReason.DELIVERY_LIMIT,
                f"delivered {redeliveries} times without being settled (the worker crashed or "
                f"lost its connection each time); delivery_limit is {self.config.delivery_limit}",
            )
            await self._dead_letter(message, delivery, started, failure)
            return
        headers = dict(delivery.headers)
        headers[HEADER_REDELIVERIES] = redeliveries
        requeued = await self._publish_then_ack(
            message, self._channel.default_exchange, self.config.name, headers, delivery, None
        )
        if requeued:
            logger.info(
                "[{}] message {} was delivered before without being settled ({} of {} allowed); "
                "requeued at the tail",
                self.config.name,
                message.message_id,
                redeliveries,
                self.config.delivery_limit,
            )

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        started: float,
        failure: _Failure,
    ) -> None:
        """Publish an annotated copy to the DLX, confirmed, then ack the original."""
        headers = dict(delivery.headers)
        headers.setdefault("x-first-death-queue", self.config.name)
        headers.setdefault("x-first-death-reason", "rejected")
        headers.setdefault("x-first-death-exchange", message.exchange or "")
        headers[HEADER_QUEUE] = self.config.name
        headers[HEADER_REASON] = failure.reason.value
        headers[HEADER_ERROR] = failure.detail[:_MAX_HEADER_TEXT]
        headers[HEADER_ATTEMPTS] = delivery.attempt
        headers[HEADER_DEAD_LETTERED_AT] = datetime.now(UTC).isoformat()
        if delivery.task is not None:
            headers[HEADER_TASK] = delivery.task
        if failure.exc is not None:
            headers[HEADER_EXCEPTION_TYPE] = type(failure.exc).__qualname__
            headers[HEADER_EXCEPTION_MESSAGE] = str(failure.exc)[:_MAX_HEADER_TEXT]
        assert self._dlx is not None
        outcome = Outcome(
            Settlement.DEAD_LETTERED, time.perf_counter() - started, failure.reason, failure.detail
        )
        await self._publish_then_ack(
            message, self._dlx, message.routing_key or "", headers, delivery, outcome
        )

    async def _publish_then_ack(
        self,
        message: AbstractIncomingMessage,
        exchange: AbstractExchange,
        routing_key: str,
        headers: dict[str, Any],
        delivery: Delivery,
        outcome: Outcome | None,
    ) -> bool:
        """Publish a copy of ``message`` (body unchanged), wait for the confirm, then ack,
        and report ``outcome`` (``None``: the copy is the same message, requeued).

        If the publish fails, reject without requeue: the broker dead-letters the original
        through the queue's ``x-dead-letter-exchange``, so it is never requeued in a loop.
        Returns whether the copy was published.
        """
        what = "requeued copy" if outcome is None else f"{outcome.settlement.value} copy"
        copy = Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=message.priority,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            # aiormq matches a returned (unroutable) message to its publish by message id.
            message_id=message.message_id or uuid.uuid4().hex,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
        )
        try:
            await exchange.publish(copy, routing_key=routing_key)
        except Exception as publish_error:
            logger.warning(
                "[{}] could not publish the {} of message {} ({}: {}); rejecting it to the "
                "queue's dead-letter exchange instead",
                self.config.name,
                what,
                message.message_id,
                type(publish_error).__name__,
                publish_error,
            )
            self._acks.forget(message)
            try:
                await message.reject(requeue=False)
            except Exception as reject_error:
                logger.warning(
                    "[{}] could not reject message {} either ({}); the broker will deliver it "
                    "again",
                    self.config.name,
                    message.message_id,
                    reject_error,
                )
                self._hooks.settled(
                    delivery, Outcome(Settlement.UNSETTLED, 0.0, detail=str(reject_error))
                )
                return False
            reason = outcome.reason if outcome else None
            self._hooks.settled(
                delivery,
                Outcome(
                    Settlement.DEAD_LETTERED,
                    outcome.duration if outcome else 0.0,
                    reason,
                    f"{outcome.detail if outcome else 'requeue failed'} (rejected to the DLX "
                    f"after the {what} could not be published: {publish_error})",
                ),
            )
            return False
        self._acks.ack(message)
        if outcome is not None:
            self._hooks.settled(delivery, outcome)
        return True

    def _notify_consumer(self, consuming: bool, detail: str) -> None:
        self._consuming = consuming
        self._plugins.consumer_changed(self.config.name, consuming, detail)
