"""SIGTERM during a broker outage with many queues: the shutdown bound is one bound for the
process, not one per queue."""

from __future__ import annotations

import signal
import time

import pytest
from brokertools import AmqpClient
from faultkit import (
    FaultRig,
    broker_outage,
    exit_code,
    fault_queue,
    publish_raw,
    take_tally,
)

pytestmark = [pytest.mark.faults, pytest.mark.broker]

QUEUES = [fault_queue(name=f"fault.q{i}", routing_key=f"fault{i}") for i in range(40)]


async def test_sigterm_during_an_outage_with_40_queues_exits_within_one_shutdown_bound(
    rig: FaultRig, amqp_url: str
) -> None:
    shutdown_timeout = 5.0
    host = await rig.start(
        QUEUES,
        RABBITWORKER_SHUTDOWN_TIMEOUT=str(shutdown_timeout),
        RABBITWORKER_RECONNECT_INTERVAL="0.2",
        RABBITWORKER_RECONNECT_INTERVAL_MAX="1",
    )
    published = []
    async with AmqpClient(amqp_url) as amqp:
        for index in range(0, 40, 10):  # one held message on every tenth queue
            body = b'{"task": "work", "payload": {"gate": "never"}}'
            # Persistent (publish_raw): a transient message would not survive the restart.
            await publish_raw(amqp, body, f"held-{index}", routing_key=f"fault{index}")
            published.append(f"held-{index}")
    await rig.wait_events("start", len(published), alive=host)

    async with broker_outage(amqp_url):
        await host.async_wait_for_log("lost the broker connection")
        started = time.monotonic()
        host.process.send_signal(signal.SIGTERM)
        code = await exit_code(host, within=120)
        took = time.monotonic() - started

    assert code == 0
    assert took < 15, f"took {took:.1f} s with a {shutdown_timeout:g} s bound\n{host.log[-3000:]}"
    async with AmqpClient(amqp_url) as amqp:
        tally = await take_tally(rig, amqp, published, queues=[q["name"] for q in QUEUES])
    tally.check(published=4, handled=0, dead_lettered=0, left=4)
