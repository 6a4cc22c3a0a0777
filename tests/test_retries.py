"""Retries go through broker-side delay queues; the last failure is dead-lettered."""

from __future__ import annotations

import asyncio

from brokertools import Broker, wait_for

from rabbitworker import close_publishers, publish_task


async def _publish(*messages: dict) -> None:
    for message in messages:
        await publish_task(message, "probe")
    await close_publishers()


def _starts(host, message_id: int) -> list[float]:
    return [e["t"] for e in host.events() if e["event"] == "start" and e["id"] == message_id]


async def test_failed_message_is_retried_after_each_delay_then_dead_lettered(
    broker: Broker, start_host
) -> None:
    host = start_host(
        [{"name": "probe.q", "routing_key": "probe", "max_retries": 2, "retry_delays": [0.5, 1]}]
    )
    await _publish({"task": "fail", "payload": {"id": 1, "error": "still broken"}})

    dead = await asyncio.to_thread(
        wait_for, lambda: broker.get_messages("tasks.dlq"), 20, 0.2, "the dead letter"
    )

    starts = _starts(host, 1)
    assert len(starts) == 3
    assert starts[1] - starts[0] >= 0.5
    assert starts[2] - starts[1] >= 1.0
    headers = dead[0]["properties"]["headers"]
    assert headers["x-rabbitworker-attempts"] == 3
    assert headers["x-rabbitworker-reason"] == "handler-error"
    assert headers["x-rabbitworker-exception-message"] == "still broken"
    assert set(broker.queues()) >= {"probe.q.retry.500ms", "probe.q.retry.1000ms"}
    assert host.stop() == 0


async def test_hung_handler_times_out_and_is_dead_lettered(broker: Broker, start_host) -> None:
    host = start_host([{"name": "probe.q", "routing_key": "probe", "handler_timeout": 0.5}])
    await _publish({"task": "work", "payload": {"id": 7, "sleep": 30}})

    dead = await asyncio.to_thread(
        wait_for, lambda: broker.get_messages("tasks.dlq"), 10, 0.2, "the dead letter"
    )

    headers = dead[0]["properties"]["headers"]
    assert headers["x-rabbitworker-reason"] == "timeout"
    assert "handler_timeout=0.5" in headers["x-rabbitworker-error"]
    assert host.stop() == 0
