"""The dead-letter topology is deleted under a running host: it is declared again, and no
failing message is multiplied, run again and again, or reported dead-lettered unstored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aio_pika import ExchangeType
from brokertools import AmqpClient, Broker
from faultkit import (
    DLQ,
    QUEUE,
    FaultRig,
    delete_exchange,
    delete_queue,
    fault_queue,
    messages_anywhere,
    poll,
    publish_tasks,
    starts_per_id,
    take_tally,
)

pytestmark = [pytest.mark.faults, pytest.mark.broker]


async def _within(seconds: float, predicate: Callable[[], Any]) -> bool:
    """Whether ``predicate`` held within ``seconds`` (polled), without failing the test."""
    try:
        await poll(predicate, within=seconds, interval=0.2, message="")
    except AssertionError:
        return False
    return True


async def _dlq_holds(amqp: AmqpClient, broker: Broker, count: int) -> bool:
    return DLQ in broker.queues() and await amqp.ready(DLQ) >= count


async def test_a_deleted_dlx_is_declared_again_and_each_failing_message_is_dead_lettered_once(
    rig: FaultRig, amqp: AmqpClient, broker: Broker
) -> None:
    host = await rig.start([fault_queue(max_retries=0)])
    await delete_exchange(broker, "tasks.dlx")
    published = await publish_tasks(amqp, "fail", ["doomed-0", "doomed-1"])

    arrived = await _within(15, lambda: _dlq_holds(amqp, broker, 2))
    starts = starts_per_id(rig)
    assert await host.async_stop() == 0
    assert starts == {"doomed-0": 1, "doomed-1": 1}, f"each handler ran once: {starts}"
    assert arrived, "both failing messages in the DLQ within 15 s"
    assert "Traceback" not in host.log, host.log[-5000:]
    assert "tasks.dlx" in broker.exchanges(), "the host declared the DLX again"

    tally = await take_tally(rig, amqp, published)
    tally.check(published=2, handled=0, dead_lettered=2, left=0)
    assert {h["x-rabbitworker-reason"] for h in tally.dead.values()} == {"handler-error"}
    assert await messages_anywhere(amqp, broker) == {}, "no copy anywhere else"


async def test_a_deleted_dlq_never_swallows_a_failing_message_reported_as_dead_lettered(
    rig: FaultRig, amqp: AmqpClient, broker: Broker
) -> None:
    host = await rig.start([fault_queue(max_retries=0)])
    await delete_queue(broker, DLQ)
    published = await publish_tasks(amqp, "fail", ["doomed"])
    await rig.wait_events("start", 1, alive=host)

    # Either outcome keeps the message: the host declares the DLQ again and stores it there,
    # or it leaves the message in the work queue. Give the first one its chance.
    await _within(15, lambda: _dlq_holds(amqp, broker, 1))
    assert await host.async_stop() == 0
    assert "Traceback" not in host.log, host.log[-5000:]

    if DLQ not in broker.queues():  # not declared again: count it empty for the tally
        dlx = await amqp.channel.declare_exchange("tasks.dlx", ExchangeType.FANOUT, durable=True)
        await (await amqp.channel.declare_queue(DLQ, durable=True)).bind(dlx, "#")
    tally = await take_tally(rig, amqp, published)
    assert len(tally.dead) + len(tally.left) == 1, (
        f"the failing message is lost: dead {tally.dead_copies}, left {tally.left_copies}"
    )
    if tally.dead:
        tally.check(published=1, handled=0, dead_lettered=1, left=0)
    else:
        tally.check(published=1, handled=0, dead_lettered=0, left=1)
        assert not host.log_lines("dead-lettered message doomed"), (
            "reported dead-lettered while no queue stored it"
        )
    assert await messages_anywhere(amqp, broker) == {}, "no copy anywhere else"
    assert QUEUE in broker.queues()
