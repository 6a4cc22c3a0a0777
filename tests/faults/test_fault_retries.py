"""Failed handlers: retried through the broker's delay queues, or dead-lettered at once."""

from __future__ import annotations

import itertools

import pytest
from brokertools import AmqpClient
from faultkit import DLQ, QUEUE, FaultRig, fault_queue, poll, publish_tasks, take_tally

pytestmark = [pytest.mark.faults, pytest.mark.broker]

DELAYS = [0.4, 0.8]
RETRY_QUEUES = (QUEUE, f"{QUEUE}.retry.400ms", f"{QUEUE}.retry.800ms")


async def test_a_failing_message_gets_max_retries_plus_one_attempts_no_sooner_than_the_delays(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    host = await rig.start([fault_queue(max_retries=2, retry_delays=DELAYS, prefetch_count=10)])
    published = await publish_tasks(amqp, "fail", [f"f-{i}" for i in range(5)])
    published += await publish_tasks(amqp, "fail", ["flaky"], succeed_on=3)

    async def settled() -> bool:
        return await amqp.ready(DLQ) == 5 and rig.handled() == {"flaky"}

    await poll(settled, within=20, message="5 dead letters and the flaky message handled")
    assert await host.async_stop() == 0

    tally = await take_tally(rig, amqp, published, queues=RETRY_QUEUES)
    tally.check(published=6, handled=1, dead_lettered=5, left=0)
    for message_id in published:
        starts = [e for e in rig.events("start") if e["id"] == message_id]
        assert [e["attempt"] for e in starts] == [1, 2, 3], message_id
        for (before, after), delay in zip(itertools.pairwise(starts), DELAYS, strict=True):
            assert after["t"] - before["t"] >= delay, f"{message_id} retried too soon"
    for headers in tally.dead.values():
        assert headers["x-rabbitworker-attempts"] == 3
        assert headers["x-rabbitworker-reason"] == "handler-error"
        assert headers["x-rabbitworker-exception-type"] == "ValueError"
        assert headers["x-rabbitworker-exception-message"] == "attempt 3 failed"
    assert tally.completions["flaky"] == 1


@pytest.mark.parametrize(
    ("task", "payload", "reason", "handler_starts"),
    [
        pytest.param("permanent", {}, "permanent-error", 1, id="PermanentError"),
        pytest.param(
            "check_signup", {"id": "7"}, "invalid-payload", 1, id="ValidationError-in-handler"
        ),
        pytest.param("validate", {"id": 7}, "invalid-payload", 0, id="typed-handler-payload"),
    ],
)
async def test_a_permanent_failure_is_dead_lettered_at_once_without_a_retry(
    rig: FaultRig,
    amqp: AmqpClient,
    task: str,
    payload: dict[str, object],
    reason: str,
    handler_starts: int,
) -> None:
    host = await rig.start([fault_queue(max_retries=3, retry_delays=[0.2])])
    published = await publish_tasks(amqp, task, ["bad"], **payload)
    published += await publish_tasks(amqp, "validate", ["good"], id=1, email="a@example.org")

    async def settled() -> bool:
        return await amqp.ready(DLQ) == 1 and rig.handled() == {"good"}

    await poll(settled, within=15, message="the dead letter and the good message")
    assert await host.async_stop() == 0

    tally = await take_tally(rig, amqp, published, queues=(QUEUE, f"{QUEUE}.retry.200ms"))
    tally.check(published=2, handled=1, dead_lettered=1, left=0)
    headers = tally.dead["bad"]
    assert headers["x-rabbitworker-reason"] == reason
    assert headers["x-rabbitworker-attempts"] == 1
    assert len([e for e in rig.events("start") if e["id"] == "bad"]) == handler_starts
    assert not host.log_lines("retrying in")
