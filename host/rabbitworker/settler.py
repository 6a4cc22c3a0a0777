"""The broker side of settling one queue's messages: the one place where a message is acked.

A :class:`Settler` carries out :class:`~rabbitworker.policy.Decision` s. Acks go out on the
queue's consumer channel, coalesced by :class:`~rabbitworker.acks.AckTracker` into as few
frames as is safe, written by one task per queue. Retry and dead-letter copies go out on
the host's *copy publisher*, a separate connection: a broker alarm blocks a connection that
publishes, and the consumer's acks must keep flowing then. A copy is confirmed stored in a
queue (an unroutable copy, e.g. a DLX with no DLQ bound, is a failure) before its original
is acked; until then the original stays unacknowledged, and a missing DLX, DLQ or retry
queue is declared again. Whatever happens, each delivery gets exactly one outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, cast

import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage
from loguru import logger
from pamqp.commands import Basic

from rabbitworker.acks import AckTracker, FrameKind
from rabbitworker.config import QueueConfig
from rabbitworker.errors import (
    BrokerTopologyMismatchError,
    ExchangeNotFoundError,
    PublishError,
    PublishRefusedError,
    UnroutableMessageError,
)
from rabbitworker.events import Delivery, Outcome, Settlement
from rabbitworker.ledger import Ledger, NoteKind, message_key
from rabbitworker.plugins import MessageHooks
from rabbitworker.policy import Action, Decision, dead_letter_headers, retry_headers
from rabbitworker.publish import PERSISTENT, ConfirmingPublisher
from rabbitworker.topology import Topology, declare_topology

#: Waits between attempts to store a copy that could not be stored (grows to the last).
COPY_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A delivery as the settler knows it: its tag on the channel of one epoch."""

    epoch: int
    tag: int


class Settler:
    """Settles every delivery of one queue exactly once.

    :param copies: where retry and dead-letter copies are published (its own connection).
    :param copies_topology: what those copies need declared (DLX, DLQ, retry queues).
    :param copy_timeout: seconds one attempt to store a copy may take.
    """

    def __init__(
        self,
        config: QueueConfig,
        hooks: MessageHooks,
        copies: ConfirmingPublisher,
        copies_topology: Topology,
        *,
        copy_timeout: float,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self._ledger = ledger
        self._hooks = hooks
        self._copies = copies
        self._copies_topology = copies_topology
        self._copy_timeout = copy_timeout
        self._channel: AbstractChannel | None = None
        self._epoch = 0
        self._tracker = AckTracker()
        #: Outcomes of acked or rejected deliveries, reported once their frames are written.
        self._reports: dict[int, tuple[Delivery, Outcome]] = {}
        self._dirty = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._giving_up = asyncio.Event()
        #: Copies being stored, by ledger key: True once stored, False if not.
        self._pending_copies: dict[str, asyncio.Future[bool]] = {}

    # -- channel epochs --------------------------------------------------------------------

    def attach(self, channel: AbstractChannel) -> None:
        """Settle on ``channel`` from now on (a new channel: a new epoch of tags)."""
        self.detach("a new channel replaced the old one")
        self._channel = channel
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write_forever(), name=f"rabbitworker-acks-{self.config.name}"
            )

    def detach(self, why: str) -> None:
        """The channel is gone: its unsettled deliveries are the broker's again."""
        for delivery, outcome in self._reports.values():
            self._report(
                delivery,
                Outcome(
                    Settlement.UNSETTLED,
                    outcome.duration,
                    detail=f"{why} before the ack was written; the broker delivers it again",
                ),
            )
        self._reports.clear()
        self._channel = None
        self._epoch += 1
        self._tracker = AckTracker()

    @property
    def epoch(self) -> int:
        return self._epoch

    def delivered(self, tag: int) -> Ticket:
        """A delivery arrived: first thing, before any await, so no ack can cover it."""
        self._tracker.delivered(tag)
        return Ticket(self._epoch, tag)

    def current(self, ticket: Ticket) -> bool:
        """Whether ``ticket`` belongs to the channel settled on now."""
        return ticket.epoch == self._epoch and self._channel is not None

    async def copy_stored_meanwhile(self, key: str) -> bool:
        """Whether a copy of message ``key`` that was still being stored when the broker
        gave the original back is stored now. Waits for it: until then its ledger note
        is not written, so the ledger alone would have the original run twice."""
        pending = self._pending_copies.get(key)
        return pending is not None and await asyncio.shield(pending)

    def _track_copy(self, key: str, copy: asyncio.Task[str]) -> None:
        """Let :meth:`copy_stored_meanwhile` wait for ``copy``, until it ends."""
        pending = asyncio.get_running_loop().create_future()
        self._pending_copies[key] = pending

        def ended(task: asyncio.Task[str]) -> None:
            stored = not task.cancelled() and task.exception() is None and task.result() == "stored"
            pending.set_result(stored)
            if self._pending_copies.get(key) is pending:
                del self._pending_copies[key]

        copy.add_done_callback(ended)

    def give_up_copies(self) -> None:
        """Shutdown: copies still failing to be stored stop trying; originals stay unacked."""
        self._giving_up.set()

    # -- settling --------------------------------------------------------------------------

    async def settle(
        self,
        ticket: Ticket,
        message: DeliveredMessage,
        delivery: Delivery,
        decision: Decision,
        started: float,
    ) -> Settlement:
        """Carry out ``decision`` for one delivery and report its one outcome.

        :returns: the settlement aimed at: ``UNSETTLED`` when the message stays with the
            broker (left, or its copy could not be stored).
        """
        duration = time.perf_counter() - started
        if decision.action is Action.LEAVE:
            self.leave(ticket, delivery, decision.detail or "left for redelivery", duration)
            return Settlement.UNSETTLED
        if decision.action is Action.ACK:
            self._ack(
                ticket,
                delivery,
                Outcome(Settlement.ACKED, duration, detail=decision.detail, result=decision.result),
            )
            return Settlement.ACKED
        outcome = Outcome(
            decision.settlement,
            duration,
            decision.reason,
            decision.detail,
            retry_in=decision.retry_in,
        )
        # The copy is stored on another connection; a cancellation of this task (the
        # channel closing) must not cut it off half way: wait for it regardless.
        key = message_key(self.config.name, delivery.message_id, message.body)
        storing = self._store_copy(message, delivery, decision)
        # In the context the handler ran in, so the publish hooks see what the handler hooks
        # made current (the tracing plugin: the copy's parent span).
        copy = asyncio.get_running_loop().create_task(storing, context=delivery.context)
        self._track_copy(key, copy)
        stored = await asyncio.shield(copy)
        if stored == "stored":
            if not self.current(ticket):
                noted = self._ledger is not None and await self._ledger.note(NoteKind.COPIED, [key])
                logger.warning(
                    "[{}] the {} copy of message {} is stored, but its channel closed before "
                    "the original was acked: the broker delivers the original again{}",
                    self.config.name,
                    outcome.settlement.value,
                    delivery.message_id,
                    ", and it will be acked without running again" if noted else "",
                )
            self._ack(ticket, delivery, outcome)
            return outcome.settlement
        if stored == "reject":
            self._reject(ticket, delivery, outcome)
            return outcome.settlement
        self.leave(
            ticket,
            delivery,
            f"its {outcome.settlement.value} copy could not be stored before shutdown",
            duration,
        )
        return Settlement.UNSETTLED

    def leave(self, ticket: Ticket, delivery: Delivery, why: str, duration: float = 0.0) -> None:
        """Leave the delivery unacknowledged: returned to its queue when the channel closes."""
        if self.current(ticket):
            self._tracker.abandon(ticket.tag)
        self._report(delivery, Outcome(Settlement.UNSETTLED, duration, detail=why))

    def _ack(self, ticket: Ticket, delivery: Delivery, outcome: Outcome) -> None:
        if not self.current(ticket):
            self._report(
                delivery,
                Outcome(
                    Settlement.UNSETTLED,
                    outcome.duration,
                    detail="its channel closed before the ack; the broker delivers it again",
                ),
            )
            return
        self._tracker.ack(ticket.tag)
        self._reports[ticket.tag] = (delivery, outcome)
        self._dirty.set()

    def _reject(self, ticket: Ticket, delivery: Delivery, outcome: Outcome) -> None:
        if not self.current(ticket):
            self.leave(ticket, delivery, "its channel closed before the reject")
            return
        self._tracker.reject(ticket.tag)
        self._reports[ticket.tag] = (delivery, outcome)
        self._dirty.set()

    def _report(self, delivery: Delivery, outcome: Outcome) -> None:
        self._hooks.settled(delivery, outcome)

    async def _write_forever(self) -> None:
        """Write the pending frames once per loop iteration, then report their outcomes
        (the settled hook runs after the broker was told)."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.config.prefetch_count > 1:
                # Let every handler that finishes in this iteration join the same frames
                # (with one message at a time there is nothing to join: ack at once).
                await asyncio.sleep(0)
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending now (also called before the channel is closed)."""
        channel = self._channel
        if channel is None or not self._tracker.pending:
            return
        epoch = self._epoch
        frames = self._tracker.frames()
        written: set[int] = set()
        try:
            for frame in frames:
                if frame.kind is FrameKind.REJECT:
                    await channel.basic_reject(frame.tag, requeue=False, wait=False)
                else:
                    await channel.basic_ack(frame.tag, multiple=frame.multiple, wait=False)
                written.update(frame.covers)
        except (aiormq.exceptions.AMQPError, RuntimeError, ConnectionError) as exc:
            logger.warning(
                "[{}] could not write acks ({}: {}); the broker delivers those messages again",
                self.config.name,
                type(exc).__name__,
                exc,
            )
        if epoch != self._epoch:
            return  # detached meanwhile: detach() reported what was pending
        for tag in sorted(self._reports.keys() & {t for f in frames for t in f.covers}):
            delivery, outcome = self._reports.pop(tag)
            if tag not in written:
                outcome = Outcome(
                    Settlement.UNSETTLED,
                    outcome.duration,
                    detail="the ack could not be written; the broker delivers it again",
                )
            self._report(delivery, outcome)

    async def close(self) -> None:
        """Write pending frames and stop the writer (the channel closes after this)."""
        with contextlib.suppress(Exception):
            await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    # -- copies ----------------------------------------------------------------------------

    def _copy_of(
        self, message: DeliveredMessage, delivery: Delivery, decision: Decision
    ) -> tuple[str, str, Basic.Properties]:
        original = message.header.properties
        headers = dict(original.headers or {})
        if decision.action is Action.RETRY:
            exchange, routing_key = "", decision.retry_queue or ""
            headers = retry_headers(headers, delivery.attempt, decision)
        else:
            exchange = self.config.dlx_exchange_name
            routing_key = cast(Basic.Deliver, message.delivery).routing_key or ""
            headers = dead_letter_headers(
                headers,
                queue=self.config.name,
                exchange=cast(Basic.Deliver, message.delivery).exchange or "",
                task=delivery.task,
                attempt=delivery.attempt,
                decision=decision,
            )
        properties = Basic.Properties(
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            headers=headers,
            delivery_mode=PERSISTENT,
            priority=original.priority,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            message_id=original.message_id,
            timestamp=original.timestamp,
            message_type=original.message_type,
            app_id=original.app_id,
        )
        return exchange, routing_key, properties

    async def _store_copy(
        self, message: DeliveredMessage, delivery: Delivery, decision: Decision
    ) -> str:
        """Publish the copy until the broker confirms it is in a queue.

        :returns: ``"stored"``; ``"reject"`` when the broker refuses the copy for good (too
            large: the queue's own dead-lettering takes the original instead); ``"gave up"``
            at shutdown.
        """
        exchange, routing_key, properties = self._copy_of(message, delivery, decision)
        what = f"{decision.settlement.value} copy of message {delivery.message_id}"
        failures = 0
        while True:
            try:
                await self._copies.publish(
                    message.body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    timeout=self._copy_timeout,
                )
                if failures:
                    logger.info(
                        "[{}] stored the {} after {} failed attempt(s)",
                        self.config.name,
                        what,
                        failures,
                    )
                return "stored"
            except (ExchangeNotFoundError, UnroutableMessageError) as exc:
                problem: Any = exc
                await self._declare_copies_topology()
            except PublishRefusedError as exc:
                if isinstance(exc.__cause__, aiormq.exceptions.ChannelPreconditionFailed):
                    logger.warning(
                        "[{}] the broker refuses the {} for good ({}); rejecting the original "
                        "to the queue's dead-letter exchange instead",
                        self.config.name,
                        what,
                        exc,
                    )
                    return "reject"
                problem = exc
            except PublishError as exc:
                problem = exc
            except (aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
                # Not one of the publisher's own errors, but still a failed attempt: let it
                # escape and the original would stay unacknowledged with no one retrying.
                problem = f"{type(exc).__name__}: {exc}"
            failures += 1
            wait = COPY_BACKOFF[min(failures, len(COPY_BACKOFF)) - 1]
            logger.warning(
                "[{}] could not store the {} (attempt {}: {}); the original stays "
                "unacknowledged, trying again in {:g} s",
                self.config.name,
                what,
                failures,
                problem,
                wait,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._giving_up.wait()
            if self._giving_up.is_set():
                return "gave up"

    async def _declare_copies_topology(self) -> None:
        """Declare the DLX, DLQ and retry queues again (someone deleted one)."""
        try:
            await self._copies.run_on_channel(
                lambda channel: declare_topology(channel, self._copies_topology),
                within=self._copy_timeout,
            )
            logger.warning(
                "[{}] declared its dead-letter exchange {!r}, DLQ {!r} and retry queues again",
                self.config.name,
                self.config.dlx_exchange_name,
                self.config.dlq_name,
            )
        except BrokerTopologyMismatchError as exc:
            logger.error("[{}] cannot declare what its copies need: {}", self.config.name, exc)
        except (
            PublishError,
            aiormq.exceptions.AMQPError,
            TimeoutError,
            OSError,
            RuntimeError,
        ) as exc:
            logger.warning(
                "[{}] could not declare what its copies need ({}: {})",
                self.config.name,
                type(exc).__name__,
                exc,
            )
