"""The worker process dies: SIGKILL mid-batch, and a poison message that kills it each time."""

from __future__ import annotations

import pytest
from brokertools import AmqpClient
from faultkit import DLQ, QUEUE, FaultRig, fault_queue, poll, publish_tasks, take_tally

pytestmark = [pytest.mark.faults, pytest.mark.broker]


async def test_sigkill_with_50_messages_in_flight_a_restarted_host_handles_them_all(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    queues = [fault_queue(prefetch_count=50)]
    first = await rig.start(queues)
    published = await publish_tasks(amqp, "work", [f"k-{i}" for i in range(50)], gate="go")
    await rig.wait_events("start", 50, alive=first)
    assert await amqp.ready(QUEUE) == 0, "all 50 are in flight in the first host"

    first.process.kill()
    first.process.wait(timeout=10)

    async def all_back() -> bool:
        return await amqp.ready(QUEUE) == 50

    await poll(all_back, within=15, message="the broker to take the 50 unacked messages back")
    rig.open_gate("go")
    second = await rig.start(queues)
    await rig.wait_events("end", 50, alive=second, distinct=True)
    assert await second.async_stop() == 0

    tally = await take_tally(rig, amqp, published)
    tally.check(published=50, handled=50, dead_lettered=0, left=0)
    assert not [e for e in rig.events("end") if e["pid"] == first.process.pid]
    assert {e["id"] for e in rig.events("start") if e["pid"] == second.process.pid} == set(
        published
    )


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_message_that_kills_the_worker_every_time_is_dead_lettered_after_the_delivery_limit(
    rig: FaultRig, amqp: AmqpClient, queue_type: str
) -> None:
    limit = 2
    queues = [fault_queue(queue_type=queue_type, delivery_limit=limit)]
    host = await rig.start(queues)
    published = await publish_tasks(amqp, "crash", ["poison"])
    published += await publish_tasks(amqp, "work", ["ok-1", "ok-2", "ok-3"])

    async def crashed_or_dead_lettered() -> str | None:
        if host.process.poll() is not None:
            return "crashed"
        if await amqp.ready(DLQ):
            return "dead-lettered"
        return None

    crashes = 0
    # The test plays the supervisor: it restarts the host each time the poison kills it.
    while await poll(crashed_or_dead_lettered, within=20, message="a crash or the DLQ") == (
        "crashed"
    ):
        assert host.process.returncode == 1, host.log[-3000:]
        crashes += 1
        assert crashes <= limit + 1, "the poison message keeps killing the worker"
        host = await rig.start(queues, wait=False)

    await rig.wait_events("end", 3, alive=host)
    assert await host.async_stop() == 0

    assert crashes == limit + 1
    assert len(rig.events("start")) - 3 == crashes, "one handler start per crash, no more"
    tally = await take_tally(rig, amqp, published)
    tally.check(published=4, handled=3, dead_lettered=1, left=0)
    headers = tally.dead["poison"]
    # Both queue types: the host counts the crashes (the broker's x-delivery-count on
    # quorum, the ledger on classic) and dead-letters the message itself.
    assert headers["x-rabbitworker-reason"] == "delivery-limit"
    assert headers["x-rabbitworker-queue"] == QUEUE
    assert f"delivered {limit + 2} times" in headers["x-rabbitworker-error"]
