"""The broker restarts (``rabbitmqctl stop_app`` / ``start_app``) under a running host and
under publishers. The only tests of the suite allowed to stop the broker.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest
from brokertools import AmqpClient
from faultkit import (
    QUEUE,
    ROUTING_KEY,
    FaultRig,
    broker_outage,
    exit_code,
    fault_queue,
    poll,
    publish_tasks,
    take_tally,
)

from rabbitworker import PublishError, close_publishers, publish_task

pytestmark = [pytest.mark.faults, pytest.mark.broker]

FAST_RECONNECT = {
    "RABBITWORKER_RECONNECT_INTERVAL": "0.2",
    "RABBITWORKER_RECONNECT_INTERVAL_MAX": "1",
}


async def publish_until_stored(
    body: dict[str, object], message_id: str, failures: Counter[str]
) -> None:
    """How a publisher rides out an outage: call publish_task until it returns (the broker
    confirmed the message), retrying on PublishError; each failure is counted.

    At-least-once: a message whose confirm was lost with the connection is sent twice.
    """
    while True:
        try:
            await publish_task(body, ROUTING_KEY, message_id=message_id)
        except PublishError as exc:
            failures[type(exc).__name__] += 1
            await asyncio.sleep(0.1)  # back off: the broker is away
            continue
        return


async def test_a_broker_restart_mid_stream_loses_nothing_and_the_same_host_keeps_consuming(
    rig: FaultRig, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RABBITWORKER_PUBLISH_TIMEOUT", "2")
    host = await rig.start([fault_queue(prefetch_count=20)], **FAST_RECONNECT)
    ids = [f"s-{i}" for i in range(2000)]
    published: list[str] = []
    failures: Counter[str] = Counter()
    half_published = asyncio.Event()
    broker_down = asyncio.Event()

    async def publisher() -> None:
        for index, message_id in enumerate(ids):
            if index == len(ids) // 2:
                half_published.set()
                await broker_down.wait()  # the second half meets the outage head-on
            body = {"task": "work", "payload": {"sleep": 0.005}}
            await publish_until_stored(body, message_id, failures)
            published.append(message_id)

    stream = asyncio.create_task(publisher())
    try:
        await asyncio.wait_for(half_published.wait(), timeout=60)
        async with broker_outage(amqp_url):
            broker_down.set()
            await host.async_wait_for_log("lost the broker connection")
            await poll(lambda: failures, within=30, message="a publisher to get a PublishError")
        await asyncio.wait_for(stream, timeout=90)
    finally:
        stream.cancel()
        await close_publishers()

    await rig.wait_events("end", len(ids), alive=host, within=60, distinct=True)
    assert host.process.poll() is None, "the same host process rode out the restart"
    assert {e["pid"] for e in rig.events("end")} == {host.process.pid}
    assert host.log_lines("reconnected to")
    async with AmqpClient(amqp_url) as amqp:
        assert await amqp.consumers(QUEUE) == 1, "and consumes again"
        assert await host.async_stop() == 0
        tally = await take_tally(rig, amqp, published)
    tally.check(published=2000, handled=2000, dead_lettered=0, left=0)
    assert tally.published == set(ids)
    assert sum(failures.values()) >= 1, "the publisher had to retry"


async def test_sigterm_during_a_broker_outage_exits_in_bounded_time_leaving_messages_queued(
    rig: FaultRig, amqp_url: str
) -> None:
    shutdown_timeout = 3.0
    host = await rig.start(
        [fault_queue(prefetch_count=3)],
        RABBITWORKER_SHUTDOWN_TIMEOUT=str(shutdown_timeout),
        **FAST_RECONNECT,
    )
    async with AmqpClient(amqp_url) as amqp:
        published = await publish_tasks(amqp, "work", ["o-0", "o-1", "o-2"], gate="never")
    await rig.wait_events("start", 3, alive=host)

    async with broker_outage(amqp_url):
        await host.async_wait_for_log("lost the broker connection")
        started = time.monotonic()
        host.process.send_signal(signal.SIGTERM)
        code = await exit_code(host, within=shutdown_timeout + 30)
        took = time.monotonic() - started

    assert code == 0
    assert took < shutdown_timeout + 4, f"took {took:.1f} s\n{host.log}"
    async with AmqpClient(amqp_url) as amqp:
        tally = await take_tally(rig, amqp, published)
    tally.check(published=3, handled=0, dead_lettered=0, left=3)


async def test_publish_task_survives_a_broker_restart_between_two_calls(
    rig: FaultRig, amqp_url: str
) -> None:
    declare = await rig.start()  # declares the topology, then goes away
    assert await declare.async_stop() == 0
    body = {"task": "work", "payload": {}}
    try:
        await publish_task(body, ROUTING_KEY, message_id="before")
        async with broker_outage(amqp_url):
            pass
        await publish_task(body, ROUTING_KEY, message_id="after")  # same loop, no set-up
    finally:
        await close_publishers()

    async with AmqpClient(amqp_url) as amqp:
        assert await amqp.ready(QUEUE) == 2, "both stored, the first one across the restart"
        host = await rig.start()
        await rig.wait_events("end", 2, alive=host)
        assert await host.async_stop() == 0
        tally = await take_tally(rig, amqp, ["before", "after"])
    tally.check(published=2, handled=2, dead_lettered=0, left=0)
