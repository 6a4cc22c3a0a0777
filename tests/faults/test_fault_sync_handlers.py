"""Plain ``def`` handlers run off the event loop: their handler_timeout counts from when
they run, not from when they were delivered, and a handler that overran its timeout still
occupies its prefetch slot until its thread is done (a thread cannot be cancelled)."""

from __future__ import annotations

import pytest
from brokertools import AmqpClient, max_overlap
from faultkit import DLQ, QUEUE, FaultRig, fault_queue, poll, publish_tasks, take_tally

pytestmark = [pytest.mark.faults, pytest.mark.broker]


async def test_plain_handlers_within_their_timeout_are_all_acked_none_timed_out(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    # 0.6 s of a 1 s timeout: a message that had to wait for a busy thread would overrun
    # (1.2 s), while 0.4 s are left for a loaded machine to wake the thread up.
    host = await rig.start([fault_queue(prefetch_count=4, handler_timeout=1.0)])
    published = await publish_tasks(amqp, "sleep_sync", [f"p-{i}" for i in range(8)], sleep=0.6)

    async def settled() -> bool:
        return len(rig.handled()) + await amqp.ready(DLQ) >= 8

    await poll(settled, within=20, message="the 8 messages handled or dead-lettered")
    assert await host.async_stop() == 0

    assert not host.log_lines("timeout"), "\n".join(host.log_lines("timeout"))
    tally = await take_tally(rig, amqp, published)
    tally.check(published=8, handled=8, dead_lettered=0, left=0)
    assert len(host.log_lines("ACKed message p-")) == 8


async def test_overrunning_plain_handlers_never_run_more_than_prefetch_at_once(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    prefetch = 2
    host = await rig.start(
        [fault_queue(prefetch_count=prefetch, handler_timeout=0.5, max_retries=0)]
    )
    ids = [f"slow-{i}" for i in range(6)]
    published = await publish_tasks(amqp, "sleep_sync", ids, sleep=2)

    async def all_settled() -> bool:
        # Every message dead-lettered, and no thread still running.
        idle = len(rig.events("start")) == len(rig.events("end"))
        return idle and await amqp.ready(DLQ) >= 6

    await poll(all_settled, within=30, interval=0.2, message="6 overruns settled, threads done")
    assert await host.async_stop() == 0

    running = max_overlap(rig.events())
    assert running <= prefetch, f"{running} plain handlers ran at once with prefetch {prefetch}"
    starts = [e["id"] for e in rig.events("start")]
    assert sorted(starts) == sorted(ids), f"each started once: {starts}"
    # Every thread overran, so no message counts as handled; count the tally by hand.
    dead = await amqp.take_all(DLQ)
    left = await amqp.take_all(QUEUE)
    assert sorted(str(m.message_id) for m in dead) == sorted(published), "each once"
    assert {(m.headers or {}).get("x-rabbitworker-reason") for m in dead} == {"timeout"}
    assert left == []
