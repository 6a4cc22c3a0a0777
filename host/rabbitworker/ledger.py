"""The redelivery ledger: what the host remembers about messages the broker gives back.

A redelivered message says only "delivered before". To keep ``delivery_limit`` a limit on
*crashes*, the host needs two more facts, kept in a RabbitMQ stream (non-destructive reads,
replicated on a cluster, trimmed after ``ledger_max_age``):

- ``clean``: a clean shutdown gave the message back (its handler outlived the shutdown
  timeout). Written, confirmed, before the channel closes; never counted as a crash.
- ``start``: on a classic queue (which counts nothing itself), a redelivered message's
  handler is about to start. Written before it starts, so a crash during it is counted.
  Quorum queues count returns themselves (``x-delivery-count``).
- ``copied``: its retry or dead-letter copy was stored, but the channel closed before the
  original could be acked: when it comes back it is acked, not handled a second time.

Reading happens only for redelivered messages: the reader appends a ``sync`` note and reads
the stream from its start until it sees that note, so every note written before the message
came back has been seen. Concurrent readers share one scan. A message is known by its queue,
message id and a hash of its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import aiormq
import orjson
from aiormq.abc import AbstractChannel, DeliveredMessage
from loguru import logger
from pamqp.commands import Basic

from rabbitworker.errors import PublishError
from rabbitworker.publish import PERSISTENT, ConfirmingPublisher

LEDGER_QUEUE = "rabbitworker.ledger"


class NoteKind(StrEnum):
    CLEAN = "clean"
    START = "start"
    COPIED = "copied"
    SYNC = "sync"


def ledger_arguments(max_age_days: int) -> dict[str, Any]:
    """The stream's arguments: small segments, so old notes really are trimmed."""
    return {
        "x-queue-type": "stream",
        "x-max-age": f"{max_age_days}D",
        "x-stream-max-segment-size-bytes": 1_000_000,
        "x-max-length-bytes": 200_000_000,
    }


def message_key(queue: str, message_id: str | None, body: bytes) -> str:
    """How the ledger names one message of one queue."""
    digest = hashlib.blake2b(body, digest_size=8).hexdigest()
    return f"{queue}|{message_id or ''}|{digest}"


class Ledger:
    """Notes and scans on the ledger stream, through the host's copy publisher."""

    def __init__(self, publisher: ConfirmingPublisher, *, timeout: float) -> None:
        self._publisher = publisher
        self._timeout = timeout
        self.available = False
        self._waiting: list[tuple[set[str], asyncio.Future[dict[str, Counter[str]]]]] = []
        self._scanner: asyncio.Task[None] | None = None

    async def note(self, kind: NoteKind, keys: Iterable[str]) -> bool:
        """Append one note for ``keys``; returns whether the broker confirmed it."""
        keys = list(keys)
        if not keys or not self.available:
            return False
        body = orjson.dumps({"kind": kind.value, "keys": keys, "at": datetime.now(UTC)})
        try:
            await self._publisher.publish(
                body,
                exchange="",
                routing_key=LEDGER_QUEUE,
                properties=Basic.Properties(
                    delivery_mode=PERSISTENT, content_type="application/json"
                ),
                timeout=self._timeout,
            )
        except PublishError as exc:
            logger.warning(
                "could not write to the redelivery ledger {} ({}); {} message(s) not noted",
                LEDGER_QUEUE,
                exc,
                len(keys),
            )
            return False
        return True

    async def history(self, key: str) -> Counter[str]:
        """The notes about ``key`` (by kind), including every note written before now."""
        if not self.available:
            return Counter()
        future: asyncio.Future[dict[str, Counter[str]]] = asyncio.get_running_loop().create_future()
        self._waiting.append(({key}, future))
        if self._scanner is None or self._scanner.done():
            self._scanner = asyncio.get_running_loop().create_task(
                self._scan_forever(), name="rabbitworker-ledger"
            )
        found = await future
        return found.get(key, Counter())

    async def _scan_forever(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            keys = set().union(*(wanted for wanted, _ in batch))
            try:
                found = await self._scan(keys)
            except Exception as exc:
                logger.warning(
                    "could not read the redelivery ledger {} ({}: {}); {} redelivered "
                    "message(s) are judged by the broker's count alone",
                    LEDGER_QUEUE,
                    type(exc).__name__,
                    exc,
                    len(keys),
                )
                found = {}
            for _, future in batch:
                if not future.done():
                    future.set_result(found)

    async def _scan(self, keys: set[str]) -> dict[str, Counter[str]]:
        token = uuid.uuid4().hex
        if not await self.note(NoteKind.SYNC, [token]):
            raise RuntimeError("the sync note was not confirmed")
        found: dict[str, Counter[str]] = {}

        async def read(channel: AbstractChannel) -> None:
            done = asyncio.get_running_loop().create_future()

            async def on_note(message: DeliveredMessage) -> None:
                with contextlib.suppress(Exception):
                    await channel.basic_ack(cast(Basic.Deliver, message.delivery).delivery_tag or 0)
                try:
                    note = orjson.loads(message.body)
                    kind, noted = note["kind"], note["keys"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    return
                if kind == NoteKind.SYNC and token in noted:
                    if not done.done():
                        done.set_result(None)
                    return
                for noted_key in noted:
                    if noted_key in keys:
                        found.setdefault(noted_key, Counter())[kind] += 1

            await channel.basic_qos(prefetch_count=1000)
            await channel.basic_consume(
                LEDGER_QUEUE, on_note, arguments={"x-stream-offset": "first"}
            )
            await done

        await self._publisher.run_on_channel(read, within=self._timeout)
        return found

    async def declare(self, channel: AbstractChannel, max_age_days: int) -> None:
        """Declare the stream; without streams (an old broker) the ledger stays off."""
        try:
            await channel.queue_declare(
                queue=LEDGER_QUEUE, durable=True, arguments=ledger_arguments(max_age_days)
            )
        except aiormq.exceptions.AMQPError as exc:
            logger.warning(
                "cannot declare the redelivery ledger {} ({}); clean shutdowns will count "
                "toward delivery_limit and classic queues have no crash limit. It needs "
                "RabbitMQ 3.9+ with the stream_queue feature flag.",
                LEDGER_QUEUE,
                exc,
            )
            self.available = False
            return
        self.available = True
