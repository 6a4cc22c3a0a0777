"""The broker's topology changes under the host, or disagrees with it at start-up."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import httpx
import pytest
from brokertools import AUTH, AmqpClient, Broker
from faultkit import (
    QUEUE,
    FaultRig,
    Unroutable,
    exit_code,
    fault_queue,
    poll,
    publish_raw,
    publish_tasks,
    take_tally,
)

pytestmark = [pytest.mark.faults, pytest.mark.broker]


async def test_a_queue_deleted_under_the_running_host_is_redeclared_and_consumed_again(
    rig: FaultRig, amqp: AmqpClient, broker: Broker
) -> None:
    host = await rig.start()
    published = await publish_tasks(amqp, "work", ["before"])
    await rig.wait_events("end", 1, alive=host)

    path = f"{quote(broker.vhost, safe='')}/{quote(QUEUE, safe='')}"
    deleted = await asyncio.to_thread(
        httpx.delete, f"{broker.api}/queues/{path}", auth=AUTH, timeout=10
    )
    deleted.raise_for_status()

    async def routed_again() -> bool:
        # Unroutable until the host has declared and bound the queue again.
        try:
            await publish_raw(amqp, b'{"task": "work", "payload": {}}', "after")
        except Unroutable:
            return False
        return True

    await poll(routed_again, within=20, interval=0.2, message="the queue to be declared again")
    published.append("after")
    await rig.wait_events("end", 2, alive=host)
    assert await amqp.consumers(QUEUE) == 1
    assert host.log_lines(f"[{QUEUE}] queue re-declared and consumed again")
    assert await host.async_stop() == 0

    tally = await take_tally(rig, amqp, published)
    tally.check(published=2, handled=2, dead_lettered=0, left=0)


@pytest.mark.parametrize(
    ("existing", "differing"),
    [
        pytest.param({"x-dead-letter-exchange": "tasks.dlx"}, "x-queue-type", id="classic"),
        pytest.param(
            {
                "x-dead-letter-exchange": "tasks.dlx",
                "x-queue-type": "quorum",
                "x-delivery-limit": 3,
            },
            "x-delivery-limit",
            id="quorum-other-limit",
        ),
    ],
)
async def test_a_quorum_queue_that_exists_with_other_arguments_is_a_clear_error(
    rig: FaultRig, amqp: AmqpClient, existing: dict[str, object], differing: str
) -> None:
    queue = await amqp.channel.declare_queue(QUEUE, durable=True, arguments=existing)
    await publish_raw(amqp, b"{}", "kept", routing_key=QUEUE, exchange="")

    host = await rig.start([fault_queue(queue_type="quorum", delivery_limit=5)], wait=False)
    assert await exit_code(host, within=20) == 4

    log = host.log
    assert QUEUE in log
    assert differing in log
    assert "change the QueueConfig to match" in log, "says what to do"
    assert "change the QueueConfig" in log
    assert "Traceback" not in log
    assert queue.name == QUEUE
    assert await amqp.ready(QUEUE) == 1, "the existing queue and its message are untouched"
