"""A memory alarm blocks publishing connections. The consumer's acks must keep flowing
through it (dead letters are published on another connection), and once it clears every
failing message is in the DLQ exactly once.

The alarm is the broker's, for everyone on it: held for a few seconds only, and always
lifted again (``faultkit.memory_alarm``).
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from brokertools import AmqpClient, Broker
from faultkit import (
    DLQ,
    QUEUE,
    FaultRig,
    connections_named,
    fault_queue,
    force_close_connections,
    memory_alarm,
    poll,
    publish_tasks,
    starts_per_id,
    take_tally,
)

from rabbitworker.ledger import LEDGER_QUEUE

pytestmark = [pytest.mark.faults, pytest.mark.broker]

ALARM_SECONDS = 5.0


async def test_acks_keep_flowing_during_a_memory_alarm_and_failures_are_dead_lettered_after_it(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    prefetch = 4
    host = await rig.start([fault_queue(prefetch_count=prefetch, max_retries=0)])
    # The failures come first: their dead letters block, and hold two of the four slots.
    failing = await publish_tasks(amqp, "fail_after_gate", ["bad-0", "bad-1"], gate="alarm")
    working = await publish_tasks(
        amqp, "work", [f"ok-{i}" for i in range(12)], gate="alarm", sleep=0.2
    )
    await rig.wait_events("start", prefetch, alive=host)

    async with memory_alarm():
        raised = time.monotonic()
        rig.open_gate("alarm")

        # Hold the fault for its duration (the one sleep of the test).
        await asyncio.sleep(ALARM_SECONDS)
        during = [e for e in rig.events() if e["t"] >= raised]
        ready_during = await amqp.ready(QUEUE)
        dlq_during = await amqp.ready(DLQ)

    ended_during = {e["id"] for e in during if e["event"] == "end"}
    started_during = [e for e in during if e["event"] == "start"]
    # More deliveries than the prefetch window means the broker received acks.
    assert ended_during == set(working), f"acked during the alarm: {len(ended_during)} of 12"
    assert len(started_during) == 14 - prefetch, (
        f"delivered during the alarm: {len(started_during)}"
    )
    assert ready_during == 0, "the broker delivered every message during the alarm"
    assert dlq_during == 0, "no dead letter is stored while publishing is blocked"

    async def dead_lettered() -> bool:
        return await amqp.ready(DLQ) >= 2

    await poll(dead_lettered, within=15, message="both failures in the DLQ after the alarm")
    assert await host.async_stop() == 0
    assert "Traceback" not in host.log, host.log[-5000:]

    tally = await take_tally(rig, amqp, failing + working)
    tally.check(published=14, handled=12, dead_lettered=2, left=0)
    assert set(tally.dead) == set(failing)


@pytest.mark.parametrize(
    ("queue_type", "ledger"),
    [("classic", True), ("quorum", True), ("classic", False), ("quorum", False)],
    ids=["classic", "quorum", "classic-no-ledger", "quorum-no-ledger"],
)
async def test_a_dead_letter_stored_after_its_channel_closed_is_not_handled_again(
    rig: FaultRig, amqp: AmqpClient, broker: Broker, queue_type: str, ledger: bool
) -> None:
    """The failure's dead-letter copy is held up by the alarm; meanwhile its consuming
    connection is closed, so the original comes back (to the same host, reconnected) before
    the copy is stored. Once the copy is stored the original must be acked, not run again:
    one handling, one dead letter. Also without the ledger (a broker without streams,
    played here by a classic queue in the ledger stream's place)."""
    if not ledger:
        await amqp.channel.declare_queue(LEDGER_QUEUE, durable=True)
    host = await rig.start(
        [fault_queue(prefetch_count=1, max_retries=0, queue_type=queue_type)],
        RABBITWORKER_RECONNECT_INTERVAL="0.2",
    )
    [bad] = await publish_tasks(amqp, "fail_after_gate", ["bad-0"], gate="alarm")
    await rig.wait_events("start", 1, alive=host)
    consuming = f"rabbitworker-host {socket.gethostname()}:{host.process.pid}"

    async with memory_alarm():
        rig.open_gate("alarm")

        async def copy_blocked() -> bool:
            copies = await connections_named(broker, "rabbitworker-host copies")
            return any(c.get("state") == "blocked" for c in copies)

        await poll(copy_blocked, within=30, interval=0.5, message="the dead letter blocked")
        assert await force_close_connections(broker, consuming) == 1
        await host.async_wait_for_log("reconnected to", within=30)

        async def redelivered() -> bool:
            stats = (await asyncio.to_thread(broker.queue, QUEUE)).get("message_stats") or {}
            return int(stats.get("redeliver", 0)) >= 1 and await amqp.ready(QUEUE) == 0

        # The original is back with the host (delivered again, unacked) while its copy
        # waits (the statistics are a few seconds late: polled, not slept on).
        await poll(redelivered, within=30, interval=0.5, message="the original redelivered")

    async def settled() -> bool:
        depth = await asyncio.to_thread(broker.depth, QUEUE)
        return await amqp.ready(DLQ) >= 1 and depth == 0

    await poll(settled, within=30, message="the dead letter stored, the original settled")
    assert await host.async_stop() == 0
    assert "Traceback" not in host.log, host.log[-5000:]

    assert ("cannot declare the redelivery ledger" in host.log) is not ledger
    tally = await take_tally(rig, amqp, [bad])
    assert starts_per_id(rig) == {bad: 1}, "the handler ran again for a dead-lettered message"
    tally.check(published=1, handled=0, dead_lettered=1, left=0)
