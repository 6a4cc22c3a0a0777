"""/readyz follows the broker cancelling a consumer: 503 while the queue is gone, 200 again
once the host declared it again and consumes it."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from brokertools import AmqpClient, Broker
from faultkit import (
    QUEUE,
    FaultRig,
    Unroutable,
    delete_queue,
    fault_queue,
    free_port,
    poll,
    publish_raw,
    take_tally,
)

pytestmark = [pytest.mark.faults, pytest.mark.broker]


async def test_readyz_turns_503_when_the_work_queue_is_deleted_and_200_once_consumed_again(
    rig: FaultRig, amqp: AmqpClient, broker: Broker
) -> None:
    port = free_port()
    host = await rig.start([fault_queue()], RABBITWORKER_METRICS_PORT=str(port))
    url = f"http://127.0.0.1:{port}/readyz"
    statuses: list[int] = []

    async with httpx.AsyncClient(timeout=5) as client:

        async def ready_status() -> int:
            return (await client.get(url)).status_code

        async def ready() -> bool:
            return await ready_status() == 200

        await poll(ready, within=10, message="/readyz 200 at start")

        async def watch() -> None:
            # The not-ready window may be short: look as often as the loop allows.
            while True:
                statuses.append(await ready_status())
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        try:
            for round_ in ("first", "second"):  # the restored consumer is watched again
                statuses.clear()
                await delete_queue(broker, QUEUE)
                await poll(
                    lambda: 503 in statuses, within=10, message=f"/readyz 503 ({round_} delete)"
                )
                await poll(
                    lambda: 200 in statuses[statuses.index(503) :],
                    within=20,
                    message=f"/readyz 200 again ({round_} delete)",
                )
                assert await amqp.consumers(QUEUE) == 1, "ready means consuming"
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    try:
        await publish_raw(amqp, b'{"task": "work", "payload": {}}', "after")
    except Unroutable:
        pytest.fail("/readyz said 200 before the queue was declared and bound again")
    await rig.wait_events("end", 1, alive=host)
    assert await host.async_stop() == 0

    tally = await take_tally(rig, amqp, ["after"])
    tally.check(published=1, handled=1, dead_lettered=0, left=0)
