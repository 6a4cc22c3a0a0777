"""Delayed publishing at its edges: delays of zero, of a hair, just above a power of two;
priorities and large bodies carried through the cascade; a delayed message that fails its
retries, is dead-lettered naming its work queue, and is replayed. Real broker, exact counts.

Each test prints one ``DELAYS ...`` line (``pytest -s``) with what it measured.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from brokertools import AmqpClient, Broker, HostProcess, async_wait_for
from delaytools import (
    DelayTally,
    delay_queue_names,
    held_after_stats_settle,
    publish_delayed,
    ready_counts,
    starts_of,
)
from opstools import declare_like_the_host, wait_ready

from rabbitworker import QueueConfig, close_publishers, delays, dlq, publish_task
from rabbitworker.delays import Destination
from rabbitworker.policy import retry_queue_name

pytestmark = pytest.mark.broker

QUEUE = {"name": "later.q", "routing_key": "later"}
LATER = Destination("tasks", "later")


async def test_odd_delays_are_never_shorter_than_asked_and_no_longer_than_the_next_second(
    start_host: Callable[..., HostProcess], amqp: AmqpClient, broker: Broker
) -> None:
    host = start_host([{**QUEUE, "prefetch_count": 10}])
    asked = {
        "zero": 0,
        "a-hair": 0.0001,
        "just-over-1": 1.0000001,
        "just-over-2": 2.0001,
        "just-under-4": 3.9999,
        "just-over-4": 4.001,
    }
    try:
        sent = await publish_delayed(asked, "later")
    finally:
        await close_publishers()

    await host.wait_for_events("start", len(asked), within=20)
    await asyncio.sleep(1.5)
    left = await ready_counts(amqp, [*delay_queue_names(LATER), "later.q"])
    tally = DelayTally(sent, starts_of(host.events()), left | await held_after_stats_settle(broker))
    waited = {i: round(t - sent[i].began, 3) for i, t in tally.first_start().items()}
    # Lateness counts from the confirm: the first delayed call also declares the cascade
    # (its 23 quorum queues), which can take seconds on a loaded machine before anything waits.
    stored = {i: round(t - sent[i].returned, 3) for i, t in tally.first_start().items()}

    print("\n" + tally.line("odd delays", waited=waited))
    tally.check()
    # Rounded up to the next whole second, never further (plus the hops and a loaded machine).
    late = {i: w for i, w in stored.items() if w > math.ceil(asked[i]) + 1}
    assert late == {}, f"waited since the confirm: {stored}"
    assert waited["zero"] < 1, "no delay: published straight to its queue"
    assert waited["a-hair"] >= 1, "the smallest delay is a whole second"


async def test_a_zero_delay_declares_no_delay_queues(amqp_url: str, broker: Broker) -> None:
    await declare_like_the_host(amqp_url, [QUEUE])
    try:
        await publish_task({"task": "work", "payload": {"id": 1}}, "later", delay=0)
    finally:
        await close_publishers()

    assert [name for name in broker.queues() if delays.is_delay_queue(name)] == []
    async with AmqpClient(amqp_url) as client:
        assert await client.ready("later.q") == 1


async def test_a_thirty_day_delay_waits_in_the_longest_tier_with_its_due_time(
    amqp_url: str, amqp: AmqpClient
) -> None:
    await declare_like_the_host(amqp_url, [QUEUE])
    asked = 30 * 24 * 3600  # 2592000 s = 2097152 + 262144 + 131072 + ...: the longest tier first
    try:
        before = datetime.now(UTC)
        await publish_task({"task": "work"}, "later", message_id="month", delay=asked)
        after = datetime.now(UTC)
    finally:
        await close_publishers()

    waiting = await ready_counts(amqp, delay_queue_names(LATER))
    [message] = await amqp.take_all(delays.tier_name(delays.TIERS - 1))
    due = datetime.fromisoformat(str((message.headers or {})[delays.HEADER_DUE_AT]))

    print(f"\nDELAYS 30 days: waiting in {waiting}, due at {due.isoformat()}")
    assert waiting == {"rabbitworker.delay.2097152s": 1}
    assert before + timedelta(seconds=asked) <= due <= after + timedelta(seconds=asked)
    assert await amqp.ready("later.q") == 0


async def test_priorities_survive_the_cascade_and_order_the_work_queue(
    amqp_url: str, amqp: AmqpClient
) -> None:
    queue = {**QUEUE, "max_priority": 9}
    await declare_like_the_host(amqp_url, [queue])
    priorities = {f"p-{i}": 9 if i % 2 else 1 for i in range(6)}
    try:
        for message_id, priority in priorities.items():
            await publish_task(
                {"task": "work", "payload": {"id": message_id}},
                "later",
                message_id=message_id,
                priority=priority,
                delay=1,
            )
    finally:
        await close_publishers()

    await wait_ready(amqp, "later.q", len(priorities), within=15)
    taken = await amqp.take_all("later.q")

    print(f"\nDELAYS priority: queue order {[(m.message_id, m.priority) for m in taken]}")
    assert [m.priority for m in taken] == [9, 9, 9, 1, 1, 1]
    assert [m.message_id for m in taken] == ["p-1", "p-3", "p-5", "p-0", "p-2", "p-4"]


async def test_an_eight_megabyte_body_waits_and_arrives_unchanged(
    amqp_url: str, amqp: AmqpClient, broker: Broker
) -> None:
    await declare_like_the_host(amqp_url, [QUEUE])
    body = {"task": "work", "payload": {"id": "big", "blob": "x" * (8 * 1024 * 1024)}}
    began = time.monotonic()
    try:
        await publish_task(body, "later", message_id="big", delay=2)
    finally:
        await close_publishers()

    await wait_ready(amqp, "later.q", 1, within=20)
    arrived = time.monotonic() - began
    [message] = await amqp.take_all("later.q")
    left = await ready_counts(amqp, delay_queue_names(LATER))

    print(f"\nDELAYS 8 MB body: arrived after {arrived:.2f} s, left {left}")
    assert json.loads(message.body) == body
    assert message.message_id == "big"
    assert arrived >= 2
    assert left == {}
    assert await held_after_stats_settle(broker) == {}


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_delayed_failing_task_is_retried_dead_lettered_once_naming_its_queue_and_replayed(
    start_host: Callable[..., HostProcess],
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
    amqp: AmqpClient,
    broker: Broker,
    queue_type: str,
) -> None:
    queue = {**QUEUE, "queue_type": queue_type, "max_retries": 2, "retry_delays": [1]}
    host = start_host([queue])
    try:
        sent = await publish_delayed({"f-1": 2}, "later", body=fail_task)
    finally:
        await close_publishers()

    await async_wait_for(lambda: amqp.ready("tasks.dlq"), within=20, message="the dead letter")
    headers = await peek_headers(amqp, "tasks.dlq")
    [letter] = await dlq.show(broker.amqp_url, "tasks.dlq")
    first_tries = [e for e in host.events("start") if e["id"] == "f-1"]

    replay = await asyncio.to_thread(
        run_cli, "dlq", "replay", "tasks.dlq", amqp_url=broker.amqp_url
    )
    assert replay.returncode == 0, replay.stderr
    await host.wait_for_events("start", 6, within=20)
    await wait_ready(amqp, "tasks.dlq", 1, within=20)  # it fails again, all three tries
    assert await host.async_stop() == 0
    retry_queues = [retry_queue_name(config(queue), 1)]
    left = await ready_counts(amqp, [*delay_queue_names(LATER), "later.q", *retry_queues])
    dead = await amqp.take_all("tasks.dlq")
    tries = Counter(e["id"] for e in host.events("start"))
    deaths = [d["queue"] for d in headers.get("x-death", [])]

    print(
        f"\nDELAYS retries ({queue_type}): tries {tries['f-1']} (3 before the replay), DLQ "
        f"{len(dead)}, left {left}, DLQ headers name {headers.get('x-rabbitworker-queue')!r} "
        f"(first death {headers.get('x-first-death-queue')!r}, x-death {deaths})"
    )
    assert len(first_tries) == 3, "the first try and two retries"
    assert first_tries[0]["t"] - sent["f-1"].began >= 2, "the first try no sooner than asked"
    assert {e["arrived_on"] for e in first_tries} == {"later.q"}
    assert headers["x-rabbitworker-queue"] == "later.q"
    # The broker's own record starts where the host's retries began (as for any retried
    # message): the work queue's retry queue, never a tier of the cascade.
    assert headers["x-first-death-queue"] in {"later.q", *retry_queues}
    assert not [q for q in deaths if delays.is_delay_queue(q)], "no delay tier in x-death"
    assert (letter.source_queue, letter.attempts) == ("later.q", 3)
    assert tries == {"f-1": 6}, "the replay delivered it again (and it failed three times)"
    assert [m.message_id for m in dead] == ["f-1"], "in the DLQ once"
    assert left == {}


def config(queue: dict[str, object]) -> QueueConfig:
    async def unused(message: dict[str, object]) -> None: ...

    return QueueConfig(task_handlers={"fail": unused}, **queue)  # type: ignore[arg-type]


async def peek_headers(amqp: AmqpClient, queue: str) -> dict[str, Any]:
    """The headers of the first message of ``queue``, which stays where it was."""
    declared = await amqp.channel.declare_queue(queue, passive=True)
    message = await declared.get(no_ack=False)
    await message.reject(requeue=True)
    return dict(message.headers or {})


def fail_task(message_id: str) -> dict[str, object]:
    return {"task": "fail", "payload": {"id": message_id}}
