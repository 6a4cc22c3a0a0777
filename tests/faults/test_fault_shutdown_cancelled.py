"""SIGTERM past the shutdown timeout: a handler the host cancelled is unfinished, even if
it catches the cancellation and returns normally; nothing of it is acked."""

from __future__ import annotations

import signal

import pytest
from brokertools import AmqpClient
from faultkit import FaultRig, exit_code, fault_queue, publish_tasks, take_tally

pytestmark = [pytest.mark.faults, pytest.mark.broker]


async def test_a_handler_that_returns_after_the_shutdown_cancelled_it_leaves_all_messages_queued(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    host = await rig.start([fault_queue(prefetch_count=3)], RABBITWORKER_SHUTDOWN_TIMEOUT="1")
    # The one that returns after its cancellation has the highest delivery tag: an ack of it
    # with multiple=True would cover the two abandoned ones before it.
    published = await publish_tasks(amqp, "hang", ["hang-0", "hang-1"])
    published += await publish_tasks(amqp, "cancel_and_return", ["returns"])
    await rig.wait_events("start", 3, alive=host)

    host.process.send_signal(signal.SIGTERM)
    assert await exit_code(host, within=20) == 0

    assert [e["id"] for e in rig.events("cancelled")] == ["returns"], "it was cancelled"
    tally = await take_tally(rig, amqp, published)
    tally.check(published=3, handled=0, dead_lettered=0, left=3)
    assert not host.log_lines("ACKed message"), "nothing unfinished is acked"


async def test_a_handler_that_returns_after_cancellation_alone_is_not_acked_at_shutdown(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    host = await rig.start([fault_queue(prefetch_count=3)], RABBITWORKER_SHUTDOWN_TIMEOUT="1")
    published = await publish_tasks(amqp, "cancel_and_return", ["returns"])
    published += await publish_tasks(amqp, "hang", ["hang-0", "hang-1"])
    await rig.wait_events("start", 3, alive=host)

    host.process.send_signal(signal.SIGTERM)
    assert await exit_code(host, within=20) == 0

    tally = await take_tally(rig, amqp, published)
    tally.check(published=3, handled=0, dead_lettered=0, left=3)
