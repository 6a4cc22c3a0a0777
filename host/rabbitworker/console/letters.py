"""Browsing a DLQ of any size without changing it.

A page is read by consuming the DLQ (``basic.consume``) without acking, with a prefetch
window just large enough for what the page needs; each message is summarised as it
arrives and only the summaries of the requested page are kept. Closing the channel then
gives every borrowed message back to the broker, which puts it back in its place: browsing
removes and reorders nothing. The total shown is the queue's depth (unfiltered) or the
number of matches of a scan to the end (filtered). A message's headers and body are read
only when that one message is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiormq
import orjson
from aio_pika.abc import AbstractIncomingMessage

from rabbitworker.broker import connect_operator
from rabbitworker.dlq import DeadLetter
from rabbitworker.policy import HEADER_EXCEPTION_MESSAGE, HEADER_EXCEPTION_TYPE

#: AMQP's prefetch count is 16 bits; a larger window is "unlimited" (0).
MAX_PREFETCH = 65535
#: A scan stops when no message arrived for this long (someone else took the rest).
IDLE_SECONDS = 2.0
#: Characters of a body shown in a page's row.
PREVIEW_CHARS = 160


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which dead letters to show or replay; every given criterion must hold."""

    queue: str | None = None
    task: str | None = None
    reason: str | None = None
    text: str | None = None

    @classmethod
    def of(cls, values: dict[str, Any]) -> LetterFilter:
        def pick(name: str) -> str | None:
            value = values.get(name)
            return str(value).strip() or None if value is not None else None

        return cls(pick("queue"), pick("task"), pick("reason"), pick("text"))

    @property
    def empty(self) -> bool:
        return not (self.queue or self.task or self.reason or self.text)

    def __call__(self, letter: DeadLetter) -> bool:
        if self.queue and letter.source_queue != self.queue:
            return False
        if self.task and letter.task != self.task:
            return False
        if self.reason and letter.reason != self.reason:
            return False
        if self.text:
            needle = self.text.lower()
            haystack = " ".join(
                part or ""
                for part in (
                    letter.message_id,
                    letter.task,
                    letter.source_queue,
                    letter.reason,
                    letter.error,
                    letter.body.decode("utf-8", "replace"),
                )
            )
            return needle in haystack.lower()
        return True


def summary(letter: DeadLetter, message: AbstractIncomingMessage) -> dict[str, Any]:
    """One row of a page: everything but the full body and headers."""
    headers = message.headers or {}
    text = letter.body.decode("utf-8", "replace")
    return {
        "position": letter.position,
        "message_id": letter.message_id,
        "task": letter.task,
        "source_queue": letter.source_queue,
        "reason": letter.reason,
        "error": letter.error,
        "exception_type": _text(headers.get(HEADER_EXCEPTION_TYPE)),
        "exception_message": _text(headers.get(HEADER_EXCEPTION_MESSAGE)),
        "attempts": letter.attempts,
        "dead_lettered_at": letter.dead_lettered_at,
        "size": len(letter.body),
        "preview": text[:PREVIEW_CHARS] + ("…" if len(text) > PREVIEW_CHARS else ""),
    }


def detail(letter: DeadLetter, message: AbstractIncomingMessage) -> dict[str, Any]:
    """One message in full: its row, every header, its properties and its body."""
    try:
        body: Any = orjson.loads(letter.body)
        body_is_json = True
    except orjson.JSONDecodeError:
        body, body_is_json = letter.body.decode("utf-8", "replace"), False
    return {
        **summary(letter, message),
        "headers": jsonable(dict(message.headers or {})),
        "properties": jsonable(
            {
                "content_type": message.content_type,
                "content_encoding": message.content_encoding,
                "correlation_id": message.correlation_id,
                "timestamp": message.timestamp,
                "type": message.type,
                "app_id": message.app_id,
                "delivery_mode": int(message.delivery_mode or 0),
            }
        ),
        "body": body,
        "body_is_json": body_is_json,
    }


def jsonable(value: Any) -> Any:
    """AMQP header values (bytes, datetimes, decimals, nested tables) as JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


#: Called with each borrowed message in queue order (position from 1); False stops the scan.
Visitor = Callable[[int, AbstractIncomingMessage], bool]


async def scan(amqp_url: str, dlq: str, visit: Visitor, *, need: int | None = None) -> int:
    """Borrow the messages of ``dlq`` in order, at most ``need`` (all when None), showing
    each to ``visit``; every message is back in its place when this returns. Returns the
    DLQ's depth (ready messages) when the scan began."""
    connection = await connect_operator(amqp_url)
    try:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(dlq, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise LookupError(f"queue {dlq!r} does not exist on this vhost") from exc
        declared = queue.declaration_result
        depth = int(declared.message_count or 0) if declared is not None else 0
        target = depth if need is None else min(need, depth)
        if target == 0:
            return depth
        # Nothing is acked, so the window is exactly what the scan will look at.
        await channel.set_qos(prefetch_count=target if target <= MAX_PREFETCH else 0)
        seen = 0
        done = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal seen
            if done.is_set():
                return
            seen += 1
            if not visit(seen, message) or seen >= target:
                done.set()

        try:
            await queue.consume(on_message, no_ack=False)
            last = -1
            while not done.is_set() and seen != last:
                last = seen
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), IDLE_SECONDS)
        finally:
            # Closing the channel returns every unacked message to where it was.
            await channel.close()
        return depth
    finally:
        await connection.close()


@dataclass(slots=True)
class Page:
    """One page of a DLQ: its rows, the DLQ's depth and how many match the filter."""

    depth: int
    matched: int
    offset: int
    limit: int
    letters: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "matched": self.matched,
            "offset": self.offset,
            "limit": self.limit,
            "letters": self.letters,
        }


async def page(amqp_url: str, dlq: str, wanted: LetterFilter, offset: int, limit: int) -> Page:
    """The ``limit`` dead letters after the first ``offset`` that match ``wanted``.

    Unfiltered, only ``offset + limit`` messages are borrowed; filtered, the whole DLQ is
    scanned (to count the matches) but only the page's summaries are kept.
    """
    result = Page(depth=0, matched=0, offset=offset, limit=limit)

    def visit(position: int, message: AbstractIncomingMessage) -> bool:
        letter = DeadLetter.from_message(position, message)
        if wanted(letter):
            if offset <= result.matched < offset + limit:
                result.letters.append(summary(letter, message))
            result.matched += 1
        return True

    need = None if not wanted.empty else offset + limit
    result.depth = await scan(amqp_url, dlq, visit, need=need)
    if wanted.empty:
        result.matched = result.depth
    return result


async def find(amqp_url: str, dlq: str, message_id: str) -> dict[str, Any] | None:
    """The first dead letter with ``message_id``, in full, or None; the DLQ is unchanged."""
    found: list[dict[str, Any]] = []

    def visit(position: int, message: AbstractIncomingMessage) -> bool:
        if message.message_id != message_id:
            return True
        found.append(detail(DeadLetter.from_message(position, message), message))
        return False

    await scan(amqp_url, dlq, visit)
    return found[0] if found else None
