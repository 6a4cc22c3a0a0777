"""Dead-letter queues for operators: read them, replay them, purge them.

Reading takes messages with ``basic.get`` without acking and then returns them all at once
(``nack`` with requeue), which RabbitMQ puts back in their original positions: showing a
DLQ leaves it exactly as it was. A replayed message leaves the DLQ only after the broker
confirmed its republish to the queue it came from; the republish goes through the
``rabbitworker_publish_context`` hooks like every other publish (the tracing plugin
continues the dead letter's trace).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from rabbitworker import plugins
from rabbitworker.broker import connect_operator
from rabbitworker.delays import without_delay_trace
from rabbitworker.errors import PublishError
from rabbitworker.policy import (
    FAILURE_HEADERS,
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR,
    HEADER_QUEUE,
    HEADER_REASON,
    HEADER_TASK,
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in a DLQ, described from its headers (ours, or RabbitMQ's ``x-death``)."""

    position: int
    message_id: str | None
    task: str | None
    source_queue: str | None
    reason: str | None
    error: str | None
    attempts: int | None
    dead_lettered_at: str | None
    body: bytes

    @classmethod
    def from_message(cls, position: int, message: AbstractIncomingMessage) -> DeadLetter:
        headers = without_delay_trace(message.headers or {})
        death = _first_death(headers)
        task = headers.get(HEADER_TASK)
        if task is None:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                task = orjson.loads(message.body).get("task")
        when = headers.get(HEADER_DEAD_LETTERED_AT) or death.get("time")
        attempts = headers.get(HEADER_ATTEMPTS, death.get("count"))
        return cls(
            position=position,
            message_id=message.message_id,
            task=str(task) if task is not None else None,
            source_queue=_text(headers.get(HEADER_QUEUE) or death.get("queue")),
            reason=_text(headers.get(HEADER_REASON) or death.get("reason")),
            error=_text(headers.get(HEADER_ERROR)),
            attempts=int(attempts) if isinstance(attempts, int) else None,
            dead_lettered_at=when.isoformat() if isinstance(when, datetime) else _text(when),
            body=message.body,
        )

    def as_dict(self) -> dict[str, Any]:
        try:
            body: Any = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            body = self.body.decode("utf-8", "replace")
        return {
            "position": self.position,
            "message_id": self.message_id,
            "task": self.task,
            "source_queue": self.source_queue,
            "reason": self.reason,
            "error": self.error,
            "attempts": self.attempts,
            "dead_lettered_at": self.dead_lettered_at,
            "body": body,
        }


@dataclass(slots=True)
class ReplayReport:
    replayed: int = 0
    skipped: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)


def _first_death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[-1], dict):
        return deaths[-1]
    return {}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.asynccontextmanager
async def _borrowed(
    amqp_url: str, queue_name: str, limit: int | None
) -> AsyncIterator[tuple[AbstractConnection, AbstractChannel, list[AbstractIncomingMessage]]]:
    """Take up to ``limit`` messages unacked; whatever is not acked inside goes back to its
    original position when the block ends."""
    connection = await connect_operator(amqp_url)
    try:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise LookupError(
                f"queue {queue_name!r} does not exist on this vhost; "
                "`rabbitworker-host queues` lists the DLQs"
            ) from exc
        taken: list[AbstractIncomingMessage] = []
        while limit is None or len(taken) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            taken.append(message)
        try:
            yield connection, channel, taken
        finally:
            # Closing the channel returns every unacked message to where it was.
            await channel.close()
    finally:
        await connection.close()


async def show(amqp_url: str, dlq: str, limit: int | None = None) -> list[DeadLetter]:
    """Describe the first ``limit`` dead letters of ``dlq``; the DLQ is left unchanged."""
    async with _borrowed(amqp_url, dlq, limit) as (_, _, messages):
        return [DeadLetter.from_message(i, m) for i, m in enumerate(messages, start=1)]


async def replay(
    amqp_url: str,
    dlq: str,
    *,
    task: str | None = None,
    queue: str | None = None,
    limit: int | None = None,
    select: Callable[[DeadLetter], bool] | None = None,
    bodies: Mapping[str, bytes] | None = None,
) -> ReplayReport:
    """Send dead letters back to the queue each came from, optionally only those of one
    ``task`` or source ``queue`` and for which ``select`` is true, at most ``limit``. A
    message leaves the DLQ only after its republish is confirmed; one that cannot be routed
    stays where it was. ``bodies`` replaces the body of the messages with those ids (an
    edited payload); the rest are sent as they are."""
    report = ReplayReport()
    # Without filters, the first `limit` messages are all there is to look at.
    borrow = limit if task is None and queue is None and select is None else None
    async with _borrowed(amqp_url, dlq, borrow) as (connection, _, messages):
        confirming = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            for message in messages:
                letter = DeadLetter.from_message(0, message)
                wanted = (
                    (task is None or letter.task == task)
                    and (queue is None or letter.source_queue == queue)
                    and (select is None or select(letter))
                )
                if not wanted or (limit is not None and report.replayed >= limit):
                    report.skipped += 1
                    continue
                if letter.source_queue is None:
                    report.failed += 1
                    report.problems.append(
                        f"message {letter.message_id}: no header names its source queue"
                    )
                    continue
                body = (bodies or {}).get(letter.message_id or "")
                try:
                    await _republish(confirming, message, letter.source_queue, dlq, body)
                except PublishError as exc:
                    report.failed += 1
                    report.problems.append(f"message {letter.message_id}: {exc}")
                    continue
                await message.ack()
                report.replayed += 1
        finally:
            await confirming.close()
    return report


async def _republish(
    channel: AbstractChannel,
    message: AbstractIncomingMessage,
    to: str,
    dlq: str,
    body: bytes | None = None,
) -> None:
    headers = {k: v for k, v in (message.headers or {}).items() if k not in FAILURE_HEADERS}
    # Not message.routing_key: that is the key the message was first published with.
    headers["x-rabbitworker-replayed-from"] = dlq
    # aiormq matches a returned (unroutable) message to its publish by message id.
    message_id = message.message_id or uuid.uuid4().hex
    with plugins.active().message_hooks().publish_context("", to, message_id, headers):
        copy = aio_pika.Message(
            message.body if body is None else body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
        )
        try:
            await channel.default_exchange.publish(copy, routing_key=to, mandatory=True)
        except aio_pika.exceptions.PublishError as exc:
            raise PublishError(
                f"queue {to!r} does not exist (unroutable); left in the DLQ"
            ) from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishError(
                f"the broker refused the republish to {to!r}; left in the DLQ"
            ) from exc


async def purge(amqp_url: str, dlq: str) -> int:
    """Delete every message in ``dlq``; returns how many there were."""
    connection = await connect_operator(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(dlq, passive=True)
        result = await queue.purge()
        return int(result.message_count or 0)
    finally:
        await connection.close()
