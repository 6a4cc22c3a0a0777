"""A memory alarm blocks publishing connections. The consumer's acks must keep flowing
through it (dead letters are published on another connection), and once it clears every
failing message is in the DLQ exactly once.

The alarm is the broker's, for everyone on it: held for a few seconds only, and always
lifted again (``faultkit.memory_alarm``).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from brokertools import AmqpClient
from faultkit import (
    DLQ,
    QUEUE,
    FaultRig,
    fault_queue,
    memory_alarm,
    poll,
    publish_tasks,
    take_tally,
)

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
