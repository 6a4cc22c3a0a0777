"""A handler that hangs is cancelled at handler_timeout; the channel stays usable."""

from __future__ import annotations

import pytest
from brokertools import AmqpClient
from faultkit import DLQ, QUEUE, FaultRig, fault_queue, poll, publish_tasks, take_tally

pytestmark = [pytest.mark.faults, pytest.mark.broker]


async def test_a_hung_handler_times_out_and_the_next_message_on_the_same_channel_is_acked(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    # prefetch 1: the next message is only delivered once the hung one is settled.
    host = await rig.start([fault_queue(handler_timeout=0.5)])
    published = await publish_tasks(amqp, "hang", ["hung"])
    published += await publish_tasks(amqp, "work", ["next"])

    async def settled() -> bool:
        return await amqp.ready(DLQ) == 1 and rig.handled() == {"next"}

    await poll(settled, within=15, message="the timed-out message and the next one")
    assert host.process.poll() is None, "the host keeps running"
    assert await amqp.consumers(QUEUE) == 1, "still consuming"
    assert host.log_lines("ACKed message next")
    assert not host.log_lines("lost the broker connection")
    assert "PRECONDITION_FAILED" not in host.log, "the broker never closed our channel"
    assert await host.async_stop() == 0

    starts = {e["id"]: e["t"] for e in rig.events("start")}
    assert starts["next"] - starts["hung"] >= 0.5
    tally = await take_tally(rig, amqp, published)
    tally.check(published=2, handled=1, dead_lettered=1, left=0)
    headers = tally.dead["hung"]
    assert headers["x-rabbitworker-reason"] == "timeout"
    assert "handler_timeout=0.5" in headers["x-rabbitworker-error"]
