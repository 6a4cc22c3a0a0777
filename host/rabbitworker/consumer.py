"""Consuming one queue: a delivery is decoded, its handler run, and the outcome decided.

Each queue has a :class:`QueueConsumer` on its own channel with ``basic.qos`` set to the
queue's ``prefetch_count``. A delivery walks down once: here it is decoded and handled,
:mod:`rabbitworker.policy` decides what becomes of it, and the queue's
:class:`~rabbitworker.settler.Settler` carries that out on the broker.

Concurrency is exactly ``prefetch_count``: every handler run holds one of that many slots
until it *really* ends, so a timed-out plain handler whose thread goes on, or an async one
that ignores its cancellation, still counts, and a message never waits for a thread while
its deadline runs (the deadline starts when the handler does).

The consumer owns its channel's recovery: a closed channel (a channel error, a consumer
timeout) is opened again on the same connection with QoS, the queue and its binding
declared again and the consumer restored; a consumer the broker cancelled (its queue was
deleted) is restored the same way. Readiness follows every one of these transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, cast

from aiormq.abc import (
    AbstractChannel,
    AbstractConnection,
    ConsumerCallback,
    DeliveredMessage,
)
from loguru import logger
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from rabbitworker.config import QueueConfig
from rabbitworker.context import TaskContext, _current
from rabbitworker.events import DeadLetterReason, Delivery, Settlement
from rabbitworker.handlers import Invoker, RunSlot, current_run
from rabbitworker.ledger import Ledger, NoteKind, message_key
from rabbitworker.plugins import NO_CONTEXT, HostPlugins
from rabbitworker.policy import (
    HEADER_ATTEMPT,
    HEADER_DELIVERY_COUNT,
    HEADER_REDELIVERIES,
    Action,
    BadInput,
    Decision,
    HandlerOutcome,
    Interrupted,
    Interruption,
    Raised,
    Refused,
    Returned,
    TimedOut,
    decide,
    decode_task,
    delivery_limit_exceeded,
    int_header,
)
from rabbitworker.settler import Settler, Ticket
from rabbitworker.topology import Topology, declare_topology

#: Why the consumer cancelled a handler: its deadline passed.
_TIMEOUT = "timeout"


@dataclass(slots=True, eq=False)
class _Run:
    """One delivery being handled."""

    ticket: Ticket
    #: "wait" (for a slot), "handler" (running), "settle" (deciding is over).
    phase: str = "wait"
    slot: RunSlot | None = None
    #: Set when the consumer cancels the run: the timeout, or an :class:`Interruption`.
    why: str | None = None
    reported: bool = False
    announced: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class QueueConsumer:
    """Consumes one queue and hands each delivery's decision to its settler."""

    def __init__(
        self,
        config: QueueConfig,
        plugins: HostPlugins,
        settler: Settler,
        work_topology: Topology,
        *,
        max_message_bytes: int,
        executor: Executor | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self._ledger = ledger
        #: Keys of the messages a shutdown gave back (noted in the ledger as clean).
        self.left_at_shutdown: list[str] = []
        self._plugins = plugins
        self._hooks = plugins.message_hooks()
        self.settler = settler
        self._work_topology = work_topology
        self._max_bytes = max_message_bytes
        self._invokers: dict[str, Invoker] = {
            task: spec.invoker(executor) for task, spec in config.handler_specs.items()
        }
        self._async = {task: spec.is_async for task, spec in config.handler_specs.items()}
        self._known_tasks = ", ".join(sorted(self._invokers))
        self._max_attempts = 1 + config.max_retries
        self._slots = asyncio.Semaphore(config.prefetch_count)
        self._runs: dict[asyncio.Task[None], _Run] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._channel: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._consuming = False
        self._stopping = False
        self._background: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._watch_interval = min(1.0, config.handler_timeout / 20)
        # aiormq accepts a plain function (it wraps it); its type says coroutine function.
        self._callback = cast(ConsumerCallback, self._on_message)

    # -- state -----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Deliveries of this queue being handled or settled right now."""
        return len(self._runs)

    @property
    def consuming(self) -> bool:
        """Whether the broker is delivering this queue's messages to us right now."""
        return self._consuming

    def _notify(self, consuming: bool, detail: str) -> None:
        if consuming != self._consuming or not consuming:
            self._consuming = consuming
            self._plugins.consumer_changed(self.config.name, consuming, detail)

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the channel -----------------------------------------------------------------------

    async def attach(self, connection: AbstractConnection) -> None:
        """Open this queue's channel on ``connection`` and consume (QoS per consumer)."""
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.basic_qos(prefetch_count=self.config.prefetch_count)
            await declare_topology(channel, self._work_topology)
            self.settler.attach(channel)
            self._channel = channel
            channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
            self._spawn(self._watch(channel), f"rabbitworker-watch-{self.config.name}")
            deliver_directly(channel, self._on_message)
            ok = await channel.basic_consume(self.config.name, self._callback, no_ack=False)
        except BaseException:
            if self._channel is channel:
                self._channel = None
                self.settler.detach("the channel failed while being set up")
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        self._consumer_tag = ok.consumer_tag
        self._notify(True, f"consuming with prefetch {self.config.prefetch_count}")

    async def _watch(self, channel: AbstractChannel) -> None:
        """When the channel closes under us, settle what it had, then open another."""
        error: BaseException | None = None
        try:
            await channel.closing
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            error = exc
        if self._channel is not channel:
            return
        why = f"{type(error).__name__}: {error}" if error else "closed"
        self.lost(f"its channel closed ({why})")
        connection = channel.connection
        delay = 0.2
        while not self._stopping and not connection.is_closed:
            await asyncio.sleep(delay)
            if self._stopping or connection.is_closed or self._channel is not None:
                return
            try:
                await self.attach(connection)
                logger.info("[{}] channel opened again; consuming again", self.config.name)
                return
            except Exception as exc:
                logger.warning(
                    "[{}] could not open its channel again ({}: {}); retrying",
                    self.config.name,
                    type(exc).__name__,
                    exc,
                )
                delay = min(delay * 2, 5.0)

    def lost(self, why: str) -> None:
        """The channel (or the whole connection) is gone: handlers in flight are cancelled,
        their messages stay with the broker."""
        if self._channel is None and not self._consuming:
            return
        self._channel = None
        self._consumer_tag = None
        self.settler.detach(why)
        self._cancel_runs(Interruption.CHANNEL_LOST, phases=("wait", "handler"))
        self._notify(False, why)

    def _on_broker_cancel(self, _: Any) -> None:
        self._consumer_tag = None
        self._notify(False, "the broker cancelled the consumer (queue deleted?)")
        if not self._stopping:
            self._spawn(self._restore_consumer(), f"rabbitworker-restore-{self.config.name}")

    async def _restore_consumer(self) -> None:
        """Declare the queue again and consume it again on the same channel (after a
        moment: whoever deleted the queue may be re-creating it with other arguments)."""
        delay = 0.2
        while not self._stopping:
            await asyncio.sleep(delay)
            channel = self._channel
            if channel is None or channel.is_closed:
                return  # the channel watcher takes over
            try:
                await declare_topology(channel, self._work_topology)
                ok = await channel.basic_consume(self.config.name, self._callback, no_ack=False)
            except Exception as exc:
                logger.warning("[{}] could not consume again yet: {}", self.config.name, exc)
                delay = min(delay * 2, 5.0)
                continue
            self._consumer_tag = ok.consumer_tag
            logger.info("[{}] queue re-declared and consumed again", self.config.name)
            self._notify(True, "consuming again after the broker cancelled the consumer")
            return

    async def stop_consuming(self) -> None:
        """Ask the broker for no more messages; those in flight go on."""
        self._stopping = True
        channel, tag = self._channel, self._consumer_tag
        self._consumer_tag = None
        self._notify(False, "stopping")
        if channel is not None and tag is not None and not channel.is_closed:
            await channel.basic_cancel(tag)

    async def wait_idle(self) -> None:
        """Return once no delivery of this queue is being handled or settled."""
        await self._idle.wait()

    def abandon_in_flight(self) -> int:
        """Shutdown: cancel the handlers still running and stop retrying copies; their
        messages stay unacknowledged (returned when the channel closes)."""
        self.settler.give_up_copies()
        return self._cancel_runs(Interruption.SHUTDOWN, phases=("wait", "handler"))

    def report_stuck(self) -> int:
        """Give every run that has not ended its one outcome (unsettled): a handler that
        ignores cancellation may never end, and the process is leaving."""
        stuck = 0
        for run in self._runs.values():
            if not run.reported:
                run.reported = True
                stuck += 1
                delivery = run.extra["delivery"]
                self._received(run, delivery)
                self.settler.leave(
                    run.ticket,
                    delivery,
                    "its handler did not stop when cancelled; the broker delivers it again",
                )
                self.left_at_shutdown.append(
                    message_key(self.config.name, delivery.message_id, run.extra["body"])
                )
        return stuck

    async def close(self) -> None:
        """Write pending acks and close the channel: unsettled messages go back to the
        queue, in their places."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.settler.close()
        channel, self._channel = self._channel, None
        for task in list(self._background):
            task.cancel()
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await channel.close()

    def _cancel_runs(self, why: str, phases: tuple[str, ...]) -> int:
        cancelled = 0
        for task, run in self._runs.items():
            if run.phase in phases and run.why is None:
                run.why = why
                task.cancel()
                cancelled += 1
        return cancelled

    # -- one delivery ----------------------------------------------------------------------

    def _on_message(self, message: DeliveredMessage) -> None:
        """aiormq's consumer callback: settle bookkeeping first, then our own task (so a
        closing channel never waits for, or cancels, a handler behind our back)."""
        ticket = self.settler.delivered(cast(Basic.Deliver, message.delivery).delivery_tag or 0)
        task = asyncio.get_running_loop().create_task(self._handle(message))
        self._runs[task] = _Run(ticket)
        self._idle.clear()
        task.add_done_callback(self._run_done)

    def _run_done(self, task: asyncio.Task[None]) -> None:
        self._runs.pop(task, None)
        if not self._runs:
            self._idle.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.opt(exception=error).error(
                "[{}] internal error while settling a message; it stays unacknowledged",
                self.config.name,
            )

    async def _handle(self, message: DeliveredMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        run = self._runs[task]
        started = time.perf_counter()
        properties = message.header.properties
        headers = dict(properties.headers or {})
        delivery = Delivery(
            self.config.name,
            None,
            properties.message_id,
            bool(cast(Basic.Deliver, message.delivery).redelivered),
            headers,
            int_header(headers, HEADER_ATTEMPT, 1),
        )
        run.extra["delivery"] = delivery
        run.extra["body"] = message.body
        try:
            decision = await self._decide(message, delivery, run, task)
        except asyncio.CancelledError:
            # Cancelled before its handler began (waiting for a slot or for the ledger), or
            # by someone else than this consumer (the event loop closing).
            foreign = run.why is None
            why = run.why = run.why or Interruption.CHANNEL_LOST
            if not foreign and task.cancelling():
                task.uncancel()
            outcome: HandlerOutcome = (
                TimedOut(self.config.handler_timeout)
                if why == _TIMEOUT
                else Interrupted(Interruption(why))
            )
            decision = decide(self.config, delivery.attempt, outcome)
            if foreign:
                run.phase = "settle"
                if not run.reported:
                    run.reported = True
                    self._received(run, delivery)
                    self.settler.leave(run.ticket, delivery, Interruption.CHANNEL_LOST.value)
                raise
        run.phase = "settle"
        if run.reported:
            return
        run.reported = True
        self._received(run, delivery)
        settlement = await self.settler.settle(run.ticket, message, delivery, decision, started)
        if settlement is Settlement.UNSETTLED and self._stopping:
            self.left_at_shutdown.append(
                message_key(self.config.name, delivery.message_id, message.body)
            )

    async def _decide(
        self,
        message: DeliveredMessage,
        delivery: Delivery,
        run: _Run,
        task: asyncio.Task[None],
    ) -> Decision:
        inspected = self._inspect(message, delivery)
        if delivery.redelivered:
            verdict = await self._judge_redelivery(message, delivery)
            if isinstance(verdict, Decision):
                self._received(run, delivery)
                return verdict
            if verdict is not None and not isinstance(inspected, Refused):
                inspected = verdict
        self._received(run, delivery)
        if isinstance(inspected, Refused):
            return decide(self.config, delivery.attempt, inspected)
        outcome = await self._run_handler(inspected, delivery, run, task)
        return decide(self.config, delivery.attempt, outcome)

    def _received(self, run: _Run, delivery: Delivery) -> None:
        """Announce the delivery, exactly once, before its outcome."""
        if not run.announced:
            run.announced = True
            self._hooks.received(delivery)

    async def _judge_redelivery(
        self, message: DeliveredMessage, delivery: Delivery
    ) -> Decision | Refused | None:
        """A message given back by the broker: already settled, past its crash limit, or
        to be handled again (counted first, on a classic queue)."""
        ledger = self._ledger
        key = message_key(self.config.name, delivery.message_id, message.body)
        if await self.settler.copy_stored_meanwhile(key):
            return Decision(
                Action.ACK,
                detail="its retry or dead-letter copy was stored after its channel closed",
            )
        history = await ledger.history(key) if ledger is not None else Counter()
        if history[NoteKind.COPIED]:
            return Decision(
                Action.ACK,
                detail="its retry or dead-letter copy was stored before a channel fault",
            )
        if self.config.queue_type == "quorum":
            returns = int_header(delivery.headers, HEADER_DELIVERY_COUNT, 0)
        else:
            returns = (
                1 + history[NoteKind.START] + int_header(delivery.headers, HEADER_REDELIVERIES, 0)
            )
        refused = delivery_limit_exceeded(self.config, returns, history[NoteKind.CLEAN])
        if refused is None and self.config.queue_type != "quorum" and ledger is not None:
            await ledger.note(NoteKind.START, [key])
        return refused

    def _inspect(self, message: DeliveredMessage, delivery: Delivery) -> Refused | dict[str, Any]:
        """The decoded body, or why the message cannot reach a handler (sets the task)."""
        try:
            body = decode_task(
                message.body, message.header.properties.content_type, self._max_bytes
            )
        except BadInput as bad:
            return Refused(bad.reason, bad.detail)
        delivery.task = task_name = body["task"]
        if task_name not in self._invokers:
            return Refused(
                DeadLetterReason.UNKNOWN_TASK,
                f"no handler for task {task_name!r} on queue {self.config.name!r} "
                f"(it handles: {self._known_tasks})",
            )
        return body

    async def _run_handler(
        self,
        body: dict[str, Any],
        delivery: Delivery,
        run: _Run,
        task: asyncio.Task[None],
    ) -> HandlerOutcome:
        task_name = body["task"]
        await self._slots.acquire()
        slot = RunSlot(asyncio.get_running_loop(), self._slots.release)
        run.slot = slot
        is_async = self._async[task_name]
        context_token = _current.set(
            TaskContext(
                self.config.name,
                task_name,
                delivery.message_id,
                delivery.attempt,
                self._max_attempts,
                delivery.redelivered,
                delivery.headers,
            )
        )
        run_token = current_run.set(slot)
        if is_async:
            slot.start()
        run.phase = "handler"
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(
                self._enforce_timeouts(), name=f"rabbitworker-timeouts-{self.config.name}"
            )
        contexts = self._hooks.handler_context(delivery)
        outcome: HandlerOutcome
        try:
            with contexts:
                if contexts is not NO_CONTEXT:
                    # Taken before the handler changes anything: its copy is published in it.
                    delivery.context = contextvars.copy_context()
                outcome = Returned(await self._invokers[task_name](body))
        except asyncio.CancelledError:
            if run.why is None:
                raise
            outcome = Interrupted(Interruption.SHUTDOWN)  # replaced below
        except Exception as exc:
            logger.opt(exception=exc).debug(
                "[{}] handler for task {} raised", self.config.name, task_name
            )
            outcome = Raised(exc)
        finally:
            run.phase = "settle"
            current_run.reset(run_token)
            _current.reset(context_token)
            if is_async:
                slot.end()
        if run.why is not None:
            # Our own cancellation, whether the handler let it through, swallowed it and
            # returned, or raised something else: the run ended because we stopped it.
            if task.cancelling():
                task.uncancel()
            if run.why == _TIMEOUT:
                return TimedOut(self.config.handler_timeout)
            return Interrupted(Interruption(run.why))
        return outcome

    async def _enforce_timeouts(self) -> None:
        """Cancel handlers past their deadline (one watchdog per queue, not a timer per
        message); the deadline counts from when the handler really started."""
        timeout = self.config.handler_timeout
        while True:
            await asyncio.sleep(self._watch_interval)
            now = time.monotonic()
            for task, run in list(self._runs.items()):
                slot = run.slot
                if (
                    run.phase == "handler"
                    and run.why is None
                    and slot is not None
                    and slot.started is not None
                    and now - slot.started >= timeout
                ):
                    run.why = _TIMEOUT
                    task.cancel()


def deliver_directly(
    channel: AbstractChannel, callback: Callable[[DeliveredMessage], None]
) -> None:
    """Hand ``channel``'s deliveries to ``callback`` as they are read, on the channel's
    reader: aiormq would start a task of its own for each (and wait for those tasks when
    the channel closes); the consumer starts the one task a delivery needs itself."""

    async def on_deliver_frame(frame: Basic.Deliver) -> None:
        header = await channel._get_frame()  # type: ignore[attr-defined]
        if not isinstance(header, ContentHeader):
            raise ValueError(f"unexpected frame {header!r} instead of ContentHeader")
        message = await channel._read_content(frame, header)  # type: ignore[attr-defined]
        if frame.consumer_tag in cast(Any, channel).consumers:
            callback(message)

    channel._on_deliver_frame = on_deliver_frame  # type: ignore[attr-defined]
