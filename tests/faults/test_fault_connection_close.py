"""An operator force-closes the host's connection (management API) with handlers in flight:
the host reconnects by itself, the messages come again and are handled once, the in-flight
gauge returns to 0, and the log shows neither a traceback nor an error."""

from __future__ import annotations

import pytest
from brokertools import AmqpClient, Broker
from faultkit import (
    QUEUE,
    FaultRig,
    connections_named,
    fault_queue,
    force_close_connections,
    free_port,
    metric_value,
    poll,
    publish_tasks,
    take_tally,
)

pytestmark = [pytest.mark.faults, pytest.mark.broker]

HOST_CONNECTION = "rabbitworker-host"


async def test_a_force_closed_connection_reconnects_redelivers_and_settles_cleanly(
    rig: FaultRig, amqp: AmqpClient, broker: Broker
) -> None:
    port = free_port()
    host = await rig.start(
        [fault_queue(prefetch_count=3)],
        RABBITWORKER_METRICS_PORT=str(port),
        RABBITWORKER_RECONNECT_INTERVAL="0.2",
        RABBITWORKER_RECONNECT_INTERVAL_MAX="1",
    )
    published = await publish_tasks(amqp, "work", ["c-0", "c-1", "c-2"], gate="go")
    await rig.wait_events("start", 3, alive=host)
    assert await metric_value(port, "rabbitworker_messages_in_flight", f'queue="{QUEUE}"') == 3

    assert await force_close_connections(broker, HOST_CONNECTION) >= 1
    # Delivered again on the new connection, while the first attempts were cancelled.
    await rig.wait_events("start", 6, alive=host, within=20)
    rig.open_gate("go")
    await rig.wait_events("end", 3, alive=host, distinct=True)

    async def gauge_is_zero() -> bool:
        value = await metric_value(port, "rabbitworker_messages_in_flight", f'queue="{QUEUE}"')
        return value == 0

    try:
        await poll(gauge_is_zero, within=10, message="")
    except AssertionError:
        value = await metric_value(port, "rabbitworker_messages_in_flight", f'queue="{QUEUE}"')
        pytest.fail(f"rabbitworker_messages_in_flight reads {value} with nothing in flight")
    assert await amqp.consumers(QUEUE) == 1, "consuming again"
    await poll(
        lambda: connections_named(broker, HOST_CONNECTION),
        within=15,
        message="the host's new connection in the management API",
    )
    assert host.process.poll() is None, "the same process reconnected by itself"
    assert await host.async_stop() == 0

    log = host.log
    assert "Traceback" not in log, log[-5000:]
    assert not [line for line in log.splitlines() if "| ERROR" in line], log[-5000:]
    tally = await take_tally(rig, amqp, published)
    tally.check(published=3, handled=3, dead_lettered=0, left=0)
    assert tally.completions == {"c-0": 1, "c-1": 1, "c-2": 1}, "each handled once"
    redelivered = rig.events("start")[3:]
    assert all(e["redelivered"] for e in redelivered), redelivered
