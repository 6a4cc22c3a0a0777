"""Consuming and dispatch: the one place where a message is decoded, handled, acked or
dead-lettered.

Each queue gets a :class:`QueueConsumer` on its own channel whose ``basic.qos`` is the
queue's ``prefetch_count``. aiormq runs every delivery in its own task, so the broker's
prefetch window is exactly the number of handlers running at once.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aio_pika import DeliveryMode, Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    ConsumerTag,
)
from loguru import logger

from rabbitworker.config import Handler, QueueConfig
from rabbitworker.events import DeadLetterReason, Delivery, Outcome, Settlement
from rabbitworker.plugins import HostPlugins
from rabbitworker.topology import queue_arguments

Invoker = Callable[[dict[str, Any]], Awaitable[Any]]

#: Header names on a dead-lettered copy. ``x-first-death-*`` follow RabbitMQ's own names.
HEADER_QUEUE = "x-rabbitworker-queue"
HEADER_REASON = "x-rabbitworker-reason"
HEADER_ERROR = "x-rabbitworker-error"
HEADER_EXCEPTION_TYPE = "x-rabbitworker-exception-type"
HEADER_EXCEPTION_MESSAGE = "x-rabbitworker-exception-message"
HEADER_TASK = "x-rabbitworker-task"
HEADER_DEAD_LETTERED_AT = "x-rabbitworker-dead-lettered-at"

_MAX_HEADER_TEXT = 4096


def make_invoker(handler: Handler) -> Invoker:
    """Decide once, at start-up, how a handler is called: awaited, or run in a thread."""
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
    ):
        return handler

    async def run_in_thread(message: dict[str, Any]) -> Any:
        result = await asyncio.to_thread(handler, message)
        if inspect.isawaitable(result):
            result = await result
        return result

    return run_in_thread


def has_sync_handlers(config: QueueConfig) -> bool:
    return any(make_invoker(handler) is not handler for handler in config.task_handlers.values())


class QueueConsumer:
    """Consumes one queue and settles each of its messages exactly once."""

    def __init__(self, config: QueueConfig, channel: AbstractChannel, plugins: HostPlugins):
        self.config = config
        self._channel = channel
        self._hook_received = plugins.hook.rabbitworker_message_received
        self._hook_settled = plugins.hook.rabbitworker_message_settled
        self._invokers = {task: make_invoker(h) for task, h in config.task_handlers.items()}
        self._known_tasks = ", ".join(sorted(self._invokers))
        self._queue: AbstractQueue | None = None
        self._dlx: AbstractExchange | None = None
        self._consumer_tag: ConsumerTag | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """How many messages of this queue are being handled right now."""
        return len(self._in_flight)

    async def start(self) -> None:
        """Set the channel's QoS and start consuming."""
        config = self.config
        await self._channel.set_qos(prefetch_count=config.prefetch_count)
        self._queue = await self._channel.declare_queue(
            config.name, durable=True, arguments=queue_arguments(config)
        )
        self._dlx = await self._channel.get_exchange(config.dlx_exchange_name, ensure=False)
        self._consumer_tag = await self._queue.consume(self._on_message)

    async def stop_consuming(self) -> None:
        """Ask the broker for no more messages; those in flight go on."""
        if self._queue is not None and self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            await self._queue.cancel(tag)

    async def wait_idle(self) -> None:
        """Return once no message of this queue is being handled."""
        await self._idle.wait()

    def abandon_in_flight(self) -> int:
        """Cancel the handlers still running; their messages stay unacked (redelivered)."""
        for task in self._in_flight:
            task.cancel()
        return len(self._in_flight)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._idle.clear()
        try:
            await self._process(message)
        finally:
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()

    async def _process(self, message: AbstractIncomingMessage) -> None:
        queue = self.config.name
        delivery = Delivery(
            queue, None, message.message_id, bool(message.redelivered), message.headers
        )
        started = time.perf_counter()
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError as exc:
            return await self._reject(
                message,
                delivery,
                started,
                DeadLetterReason.INVALID_JSON,
                f"body is not JSON: {exc}",
            )
        if not isinstance(body, dict):
            return await self._reject(
                message,
                delivery,
                started,
                DeadLetterReason.NOT_AN_OBJECT,
                f"body is a JSON {type(body).__name__}, not an object with a 'task' field",
            )
        task_name = body.get("task")
        if task_name is None:
            return await self._reject(
                message,
                delivery,
                started,
                DeadLetterReason.MISSING_TASK,
                "body has no 'task' field",
            )
        if not isinstance(task_name, str):
            return await self._reject(
                message,
                delivery,
                started,
                DeadLetterReason.INVALID_TASK,
                f"'task' must be a string, got {type(task_name).__name__}",
            )
        delivery.task = task_name
        invoker = self._invokers.get(task_name)
        if invoker is None:
            return await self._reject(
                message,
                delivery,
                started,
                DeadLetterReason.UNKNOWN_TASK,
                f"no handler for task {task_name!r} on queue {queue!r} "
                f"(it handles: {self._known_tasks})",
            )
        self._notify_received(delivery)
        with logger.contextualize(queue=queue, task=task_name, message_id=message.message_id):
            try:
                result = await invoker(body)
            except Exception as exc:
                logger.opt(exception=exc).debug("[{}] handler for task {} raised", queue, task_name)
                return await self._dead_letter(
                    message,
                    delivery,
                    started,
                    DeadLetterReason.HANDLER_ERROR,
                    f"{type(exc).__name__}: {exc}",
                    exc,
                )
        try:
            await message.ack()
        except Exception as exc:
            logger.warning(
                "[{}] could not ack message {} ({}: {}); the broker will deliver it again",
                queue,
                message.message_id,
                type(exc).__name__,
                exc,
            )
            return None
        self._notify_settled(
            delivery, Outcome(Settlement.ACKED, time.perf_counter() - started, result=result)
        )
        return None

    async def _reject(
        self,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        started: float,
        reason: DeadLetterReason,
        detail: str,
    ) -> None:
        """A message that never reached a handler: announce it, then dead-letter it."""
        self._notify_received(delivery)
        await self._dead_letter(message, delivery, started, reason, detail, None)

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        started: float,
        reason: DeadLetterReason,
        detail: str,
        exc: BaseException | None,
    ) -> None:
        """Publish an annotated copy to the DLX, confirmed, then ack the original.

        If that publish fails, rejecting without requeue still dead-letters the message
        through the queue's ``x-dead-letter-exchange`` (without our headers). Never requeued.
        """
        headers = dict(message.headers or {})
        headers.setdefault("x-first-death-queue", self.config.name)
        headers.setdefault("x-first-death-reason", "rejected")
        headers.setdefault("x-first-death-exchange", message.exchange or "")
        headers[HEADER_QUEUE] = self.config.name
        headers[HEADER_REASON] = reason.value
        headers[HEADER_ERROR] = detail[:_MAX_HEADER_TEXT]
        headers[HEADER_DEAD_LETTERED_AT] = datetime.now(UTC).isoformat()
        if delivery.task is not None:
            headers[HEADER_TASK] = delivery.task
        if exc is not None:
            headers[HEADER_EXCEPTION_TYPE] = type(exc).__qualname__
            headers[HEADER_EXCEPTION_MESSAGE] = str(exc)[:_MAX_HEADER_TEXT]
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
            assert self._dlx is not None
            await self._dlx.publish(copy, routing_key=message.routing_key or "")
            await message.ack()
        except Exception as publish_error:
            logger.warning(
                "[{}] could not publish dead letter to {!r} ({}: {}); rejecting it instead",
                self.config.name,
                self.config.dlx_exchange_name,
                type(publish_error).__name__,
                publish_error,
            )
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
                return
        self._notify_settled(
            delivery,
            Outcome(
                Settlement.DEAD_LETTERED,
                time.perf_counter() - started,
                reason,
                detail,
            ),
        )

    def _notify_received(self, delivery: Delivery) -> None:
        try:
            self._hook_received(delivery=delivery)
        except Exception:
            logger.exception("a rabbitworker_message_received hook raised")

    def _notify_settled(self, delivery: Delivery, outcome: Outcome) -> None:
        try:
            self._hook_settled(delivery=delivery, outcome=outcome)
        except Exception:
            logger.exception("a rabbitworker_message_settled hook raised")
