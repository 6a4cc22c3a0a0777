"""A host killed outright (SIGKILL) loses nothing: its unacked messages go to the next host."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from brokertools import AmqpClient, HostProcess, async_wait_for

pytestmark = pytest.mark.broker

QUEUES = [{"name": "probe.q", "routing_key": "probe", "prefetch_count": 2}]


async def test_messages_unacked_by_a_killed_host_are_processed_by_the_next_one(
    start_host: Callable[..., HostProcess], amqp: AmqpClient, tmp_path: Path
) -> None:
    first = start_host(QUEUES)
    # Held until the first host is dead (a sleep could end, and be acked, before the kill).
    gate = tmp_path / "gate"
    await amqp.publish_work("probe", [1, 2], sleep=0.1, gate=gate)
    await first.wait_for_events("start", 2)

    assert await first.async_stop(signal.SIGKILL) == -signal.SIGKILL
    assert first.events("end") == []
    await async_wait_for(
        lambda: _ready_is(amqp, "probe.q", 2),
        message="the killed host's messages back in the queue",
    )

    gate.touch()
    second = start_host(QUEUES)
    ends = await second.wait_for_events("end", 2)
    assert {e["id"] for e in ends} == {1, 2}
    assert {e["pid"] for e in ends} == {second.process.pid}
    starts_in_second = [e["id"] for e in second.events("start") if e["pid"] == second.process.pid]
    assert sorted(starts_in_second) == [1, 2], "each handled once more, not in a loop"
    assert await second.async_stop() == 0
    assert await amqp.ready("probe.q") == 0
    assert await amqp.ready("tasks.dlq") == 0


async def _ready_is(amqp: AmqpClient, queue: str, count: int) -> bool:
    return await amqp.ready(queue) == count
