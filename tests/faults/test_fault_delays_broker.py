"""Delayed messages while the broker itself fails: it restarts (``rabbitmqctl stop_app`` /
``start_app``) while they wait in the cascade, or raises its memory alarm while they fall
due. Every message is handled, none sooner than asked; at-least-once dead-lettering between
the tiers may hand one on twice across a restart, and the test counts and reports that.

These stop or block the broker for everyone on it: run them under
``flock /tmp/rw-broker-disrupt.lock`` so other runs are not disrupted at the same moment.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from brokertools import AmqpClient, Broker
from delaytools import (
    DelayTally,
    Sent,
    delay_queue_names,
    held_after_stats_settle,
    publish_delayed,
    ready_counts,
    starts_of,
)
from faultkit import QUEUE, ROUTING_KEY, FaultRig, broker_outage, fault_queue, memory_alarm

from rabbitworker import close_publishers
from rabbitworker.delays import Destination

pytestmark = [pytest.mark.faults, pytest.mark.broker]

DESTINATION = Destination("tasks", ROUTING_KEY)
OUTAGE_SECONDS = 5.0


async def left_anywhere(amqp: AmqpClient, broker: Broker) -> dict[str, int]:
    left = await ready_counts(amqp, [*delay_queue_names(DESTINATION), QUEUE, "tasks.dlq"])
    return left | await held_after_stats_settle(broker)


async def test_a_broker_restart_while_messages_wait_in_the_cascade_loses_none(
    rig: FaultRig, amqp_url: str, broker: Broker
) -> None:
    declarer = await rig.start([fault_queue()])
    assert await declarer.async_stop() == 0
    # 2 to 20 s, spread evenly: every tier up to 16 s holds some when the broker stops
    # (stop_app itself takes seconds), and some are still waiting once it is back.
    asked = {f"r-{i}": 2 + 18 * i / 199 for i in range(200)}
    try:
        sent = await publish_delayed(asked, ROUTING_KEY, batch=50)
    finally:
        await close_publishers()
    published = time.monotonic()

    async with broker_outage(amqp_url):
        stopped = time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS)
    back = time.monotonic()
    host = await rig.start([fault_queue(prefetch_count=20)])
    consuming = time.monotonic()
    await rig.wait_events("start", len(sent), alive=host, within=60, distinct=True)
    await asyncio.sleep(1.5)  # a duplicate would follow within the tier resolution
    assert await host.async_stop() == 0
    async with AmqpClient(amqp_url) as amqp:
        left = await left_anywhere(amqp, broker)
    tally = DelayTally(sent, starts_of(rig.events()), left)
    # Every tier restarts its full TTL when a message enters it, so a message that was due
    # to leave a tier while the broker was down is late by what is left of the outage, to
    # the end of its cascade, even if it was due long after the broker came back. Only the
    # messages whose first tier still held them when it was back are on time, and in order.
    undisturbed = {i: s for i, s in sent.items() if first_exit(s) > back + 1}
    after = DelayTally(undisturbed, tally.starts, {})
    outage = back - published

    due_while_down = [i for i, s in sent.items() if stopped <= s.due < back]
    first = tally.first_start()
    resumed = min(t for t in first.values()) - back
    print(
        "\n"
        + tally.line(
            "broker restart while waiting",
            stopped_after=f"{stopped - published:.2f} s",
            down=f"{back - stopped:.2f} s",
            due_while_down=len(due_while_down),
            first_handled_after_back=f"{resumed:.2f} s",
            duplicates=tally.duplicates,
            still_in_their_first_tier_when_back=len(undisturbed),
            their_inversion=f"{after.max_inversion(stored=True):.3f} s",
            their_lateness=f"{max(after.over().values(), default=0):.3f} s",
            host_consuming_after_back=f"{consuming - back:.2f} s",
        )
    )
    # Across a restart, at-least-once dead-lettering may hand a message on twice (moved to
    # the next tier, the broker stopped before it settled the move): counted, reported, and
    # bounded by the messages that were moving between tiers, far fewer than all of them.
    tally.check(duplicates_allowed=20)
    assert due_while_down, "the outage came while messages were falling due"
    assert max(tally.over().values()) < outage + 2, "late by the outage at most"
    assert undisturbed, "some were still waiting in their first tier when it was back"
    assert max(after.over().values()) < 1.5, "those are on time"
    assert after.max_inversion(stored=True) < 1.0, "and in due order"


def first_exit(sent: Sent) -> float:
    """When a message is due to leave the first (longest) tier it waits in, at the latest."""
    seconds = math.ceil(sent.asked)
    return sent.returned + float(2 ** (seconds.bit_length() - 1))


async def test_messages_fall_due_and_are_handled_through_a_memory_alarm(
    rig: FaultRig, amqp_url: str, broker: Broker
) -> None:
    host = await rig.start([fault_queue(prefetch_count=20)])
    # Due from 3 to 20 s: raising the alarm (and seeing it raised) takes seconds itself.
    asked = {f"m-{i}": 3 + 17 * i / 99 for i in range(100)}
    try:
        sent = await publish_delayed(asked, ROUTING_KEY, batch=50)
    finally:
        await close_publishers()

    asking = time.monotonic()
    async with memory_alarm():
        raised = time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS)
        during = [e for e in rig.events("start") if e["t"] >= raised]
    cleared = time.monotonic()
    await rig.wait_events("start", len(sent), alive=host, within=30, distinct=True)
    await asyncio.sleep(1.5)
    assert await host.async_stop() == 0
    async with AmqpClient(amqp_url) as amqp:
        left = await left_anywhere(amqp, broker)
    tally = DelayTally(sent, starts_of(rig.events()), left)
    due_during = [i for i, s in sent.items() if raised <= s.due < cleared]

    print(
        "\n"
        + tally.line(
            "memory alarm while falling due",
            alarm_raised_after=f"{raised - asking:.2f} s",
            alarm=f"{cleared - raised:.2f} s",
            due_during_alarm=len(due_during),
            handled_during_alarm=len(during),
        )
    )
    tally.check()
    assert due_during, "messages fell due while the alarm was raised"
