"""Redelivery keeps the message's place and tells the truth: a message delivered again after
a crash comes first, marked redelivered; one abandoned by clean shutdowns is not counted as
a crash; a real poison message still reaches the DLQ at the delivery limit. Each on a
classic queue (the default) and on a quorum queue."""

from __future__ import annotations

import signal

import pytest
from brokertools import AmqpClient
from faultkit import DLQ, QUEUE, FaultRig, exit_code, fault_queue, poll, publish_tasks, take_tally

pytestmark = [pytest.mark.faults, pytest.mark.broker]

QUEUE_TYPES = pytest.mark.parametrize("queue_type", ["classic", "quorum"])


@QUEUE_TYPES
async def test_after_a_crash_the_redelivered_message_is_handled_first_and_marked_redelivered(
    rig: FaultRig, amqp: AmqpClient, queue_type: str
) -> None:
    queues = [fault_queue(prefetch_count=1, queue_type=queue_type)]
    first = await rig.start(queues)
    ids = [f"o-{i}" for i in range(10)]
    # o-3 is held (a gate opened after the kill): with a plain sleep, a test slower than
    # the sleep killed the host only after o-3 was acked and o-4 taken.
    published = await publish_tasks(amqp, "work", ids[:3], sleep=0.3)
    published += await publish_tasks(amqp, "work", ids[3:4], sleep=0.3, gate="crash")
    published += await publish_tasks(amqp, "work", ids[4:], sleep=0.3)

    def third_in_flight() -> bool:
        return any(e["id"] == "o-3" for e in rig.events("start"))

    await poll(third_in_flight, within=15, message="o-3 in flight")
    first.process.kill()
    first.process.wait(timeout=10)
    rig.open_gate("crash")

    async def back_in_queue() -> bool:
        return await amqp.ready(QUEUE) == 7

    await poll(back_in_queue, within=15, message="o-3..o-9 ready again")
    second = await rig.start(queues)
    await rig.wait_events("end", 10, alive=second, distinct=True, within=20)
    assert await second.async_stop() == 0

    ends = [e["id"] for e in rig.events("end")]
    assert ends == ids, f"handled out of publish order: {ends}"
    restarted = [e for e in rig.events("start") if e["pid"] == second.process.pid]
    assert [e["id"] for e in restarted] == ids[3:], "o-3 first after the restart"
    assert restarted[0]["redelivered"] is True, "the handler is told o-3 came again"
    assert not any(e["redelivered"] for e in restarted[1:])
    tally = await take_tally(rig, amqp, published)
    tally.check(published=10, handled=10, dead_lettered=0, left=0)


@QUEUE_TYPES
async def test_a_message_abandoned_by_clean_shutdowns_beyond_the_delivery_limit_is_still_handled(
    rig: FaultRig, amqp: AmqpClient, queue_type: str
) -> None:
    limit = 2
    queues = [fault_queue(queue_type=queue_type, delivery_limit=limit)]
    published = None
    for shutdown in range(limit + 1):
        host = await rig.start(queues, RABBITWORKER_SHUTDOWN_TIMEOUT="1")
        if published is None:
            # Held until the last host (a gate, not a sleep: however late the SIGTERM
            # comes, the handler outlives the 1 s shutdown timeout).
            published = await publish_tasks(amqp, "work", ["slow"], gate="last")
        await rig.wait_events("start", shutdown + 1, alive=host)
        host.process.send_signal(signal.SIGTERM)  # the handler outlives the 1 s timeout
        assert await exit_code(host, within=20) == 0
        assert not rig.handled(), "it was abandoned, not finished"
        assert await amqp.ready(DLQ) == 0, f"dead-lettered after clean shutdown {shutdown + 1}"

    rig.open_gate("last")
    last = await rig.start(queues)

    async def outcome() -> str | None:
        if rig.handled():
            return "handled"
        if await amqp.ready(DLQ):
            return "dead-lettered"
        return None

    settled = await poll(outcome, within=20, message="the message handled or dead-lettered")
    assert await last.async_stop() == 0
    assert settled == "handled", "clean shutdowns were counted as crashes"

    assert len(rig.events("start")) == limit + 2
    tally = await take_tally(rig, amqp, published or [])
    tally.check(published=1, handled=1, dead_lettered=0, left=0)
