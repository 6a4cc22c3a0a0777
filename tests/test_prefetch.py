"""``prefetch_count = N``: up to N messages of a queue are handled at once, never more.

The probe's handlers write start/end events as they run; the largest number of handlers
running at the same time is read from them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from brokertools import AmqpClient, Broker, HostProcess, async_wait_for, max_overlap
from opstools import declare_like_the_host

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("task", ["work", "work_sync"], ids=["async-def", "plain-def"])
async def test_prefetch_is_the_ceiling_of_handlers_running_at_once(
    amqp_url: str, start_host: Callable[..., HostProcess], amqp: AmqpClient, task: str
) -> None:
    queues = [{"name": "probe.q", "routing_key": "probe", "prefetch_count": 3}]
    # All waiting before the host consumes: published one by one under a running host, the
    # first could be done before the third arrived on a slow machine.
    await declare_like_the_host(amqp_url, queues)
    await amqp.publish_work("probe", range(12), task=task, sleep=0.25)
    host = start_host(queues)

    events = await host.wait_for_events("end", 12)
    assert max_overlap(host.events()) == 3
    assert sorted(e["id"] for e in events) == list(range(12))


async def test_prefetch_one_handles_messages_one_at_a_time(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    host = start_host([{"name": "probe.q", "routing_key": "probe"}])

    await amqp.publish_work("probe", range(4), sleep=0.1)

    await host.wait_for_events("end", 4)
    assert max_overlap(host.events()) == 1


@pytest.mark.parametrize("task", ["work", "work_sync"], ids=["async-def", "plain-def"])
async def test_two_queues_have_independent_prefetch(
    amqp_url: str, start_host: Callable[..., HostProcess], amqp: AmqpClient, task: str
) -> None:
    queues = [
        {"name": "one.q", "routing_key": "one", "prefetch_count": 1},
        {"name": "four.q", "routing_key": "four", "prefetch_count": 4},
    ]
    # All waiting before the host consumes (see above).
    await declare_like_the_host(amqp_url, queues)
    await amqp.publish_work("one", range(3), task=task, sleep=0.3, queue="one.q")
    await amqp.publish_work("four", range(100, 108), task=task, sleep=0.3, queue="four.q")
    host = start_host(queues)

    await host.wait_for_events("end", 11)
    events = host.events()
    assert max_overlap(e for e in events if e["queue"] == "one.q") == 1
    assert max_overlap(e for e in events if e["queue"] == "four.q") == 4
    # The slow one-at-a-time queue does not hold the other back: both run side by side.
    assert max_overlap(events) == 5


async def test_each_queue_is_consumed_on_its_own_channel_with_its_own_qos(
    broker: Broker, start_host: Callable[..., HostProcess]
) -> None:
    start_host(
        [
            {"name": "one.q", "routing_key": "one", "prefetch_count": 1},
            {"name": "four.q", "routing_key": "four", "prefetch_count": 4},
        ]
    )

    def consumers() -> list[dict[str, Any]] | None:
        found = broker.consumers()
        # The management API fills channel_details in a little after listing a consumer.
        complete = len(found) == 2 and all(c["channel_details"] for c in found)
        return found if complete else None

    found = await async_wait_for(consumers, message="two consumers in the management API")
    by_queue = {c["queue"]["name"]: c for c in found}
    assert by_queue["one.q"]["prefetch_count"] == 1
    assert by_queue["four.q"]["prefetch_count"] == 4
    channels = {c["channel_details"]["name"] for c in found}
    assert len(channels) == 2
