"""A channel error on a dead-letter publish: the broker refuses (403 ACCESS_REFUSED) every
write to the DLX while a host runs.

The refusal closes a channel of the host's copy connection only: the consumer goes on
acking the messages that succeed, the failing originals stay unacknowledged (not lost, not
dead-lettered, not run again), and once writing is allowed again each failing message is
in the DLQ exactly once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from brokertools import AUTH, AmqpClient, Broker
from faultkit import (
    DLQ,
    QUEUE,
    FaultRig,
    fault_queue,
    poll,
    publish_tasks,
    starts_per_id,
    take_tally,
)

pytestmark = [pytest.mark.faults, pytest.mark.broker]

#: Writes allowed everywhere but the dead-letter exchange.
NO_DLX_WRITES = r"^(?!tasks\.dlx$).*"
ALL = ".*"


async def _set_permissions(broker: Broker, *, write: str) -> None:
    response = await asyncio.to_thread(
        httpx.put,
        f"{broker.api}/permissions/{quote(broker.vhost, safe='')}/guest",
        auth=AUTH,
        timeout=10,
        json={"configure": ALL, "write": write, "read": ALL},
    )
    response.raise_for_status()


@asynccontextmanager
async def dlx_writes_refused(broker: Broker) -> AsyncIterator[None]:
    """guest may not publish to ``tasks.dlx`` on this test's vhost until the block ends."""
    await _set_permissions(broker, write=NO_DLX_WRITES)
    try:
        yield
    finally:
        await _set_permissions(broker, write=ALL)


def _refused_copies(log: str) -> set[str]:
    """Ids of the messages whose dead-letter copy the host reported it could not store."""
    found = re.findall(r"could not store the dead-lettered copy of message (\S+)", log)
    return set(found)


async def _unacked(broker: Broker) -> Any:
    return (await asyncio.to_thread(broker.queue, QUEUE)).get("messages_unacknowledged")


async def test_a_refused_dead_letter_publish_keeps_the_original_until_writes_are_allowed(
    rig: FaultRig, amqp: AmqpClient, broker: Broker
) -> None:
    # Room for the three held failures and the work behind them.
    host = await rig.start(
        [fault_queue(prefetch_count=10, max_retries=0)], RABBITWORKER_PUBLISH_TIMEOUT="2"
    )
    failing = [f"doomed-{i}" for i in range(3)]
    working = [f"fine-{i}" for i in range(3)]

    async with dlx_writes_refused(broker):
        await publish_tasks(amqp, "fail", failing)
        await publish_tasks(amqp, "work", working)

        await rig.wait_events("end", 3, alive=host, distinct=True)
        await poll(
            lambda: _refused_copies(host.log) >= set(failing),
            within=15,
            message="the host reporting each failing message's dead letter unstored",
        )
        await poll(
            lambda: _held(broker),
            within=15,
            interval=0.5,
            message="the three failing originals unacknowledged",
        )
        assert rig.handled() == set(working), "the succeeding messages were acked meanwhile"
        assert await amqp.ready(DLQ) == 0, "nothing reached the DLQ while writes were refused"
        assert await amqp.ready(QUEUE) == 0, "no failing original was given back to the queue"
        assert host.process.poll() is None, host.log[-5000:]

    await poll(
        lambda: _dlq_holds(amqp, 3),
        within=20,
        interval=0.2,
        message="the three failing messages in the DLQ after writes were allowed again",
    )
    starts = starts_per_id(rig)
    assert await host.async_stop() == 0
    assert starts == dict.fromkeys(failing + working, 1), f"a handler ran twice: {starts}"
    assert "Traceback" not in host.log, host.log[-5000:]
    assert "may be stored" not in host.log, "a refused publish was reported as maybe stored"
    assert "its channel closed" not in host.log, "the consumer's channel closed"

    tally = await take_tally(rig, amqp, failing + working)
    tally.check(published=6, handled=3, dead_lettered=3, left=0)
    assert set(tally.dead) == set(failing)
    assert {h["x-rabbitworker-reason"] for h in tally.dead.values()} == {"handler-error"}


async def _held(broker: Broker) -> bool:
    return await _unacked(broker) == 3


async def _dlq_holds(amqp: AmqpClient, count: int) -> bool:
    return await amqp.ready(DLQ) >= count
