"""Handlers: what they receive, where they run, and that a handler that returns acks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from brokertools import AmqpClient, HostProcess

pytestmark = pytest.mark.broker


@pytest.fixture
def host(start_host: Callable[..., HostProcess]) -> HostProcess:
    return start_host([{"name": "probe.q", "routing_key": "probe"}])


async def test_a_handler_that_returns_gets_its_message_acknowledged(
    host: HostProcess, amqp: AmqpClient
) -> None:
    await amqp.publish_work("probe", [1])

    await host.async_wait_for_log("ACKed message m-1")
    assert await host.async_stop() == 0
    assert await amqp.ready("probe.q") == 0
    assert await amqp.ready("tasks.dlq") == 0


async def test_the_handler_receives_the_whole_decoded_body(
    host: HostProcess, amqp: AmqpClient
) -> None:
    body = {
        "task": "work",
        "payload": {"id": 1, "items": [1, 2.5, None, "é"]},
        "trace_id": "abc",
    }

    await amqp.publish(body, "probe")

    [start] = await host.wait_for_events("start", 1)
    assert start["message"] == body


async def test_an_async_handler_runs_on_the_event_loop_thread(
    host: HostProcess, amqp: AmqpClient
) -> None:
    await amqp.publish_work("probe", [1], task="work")

    [start] = await host.wait_for_events("start", 1)
    assert start["thread"] == "MainThread"


async def test_a_plain_def_handler_runs_off_the_event_loop(
    host: HostProcess, amqp: AmqpClient
) -> None:
    await amqp.publish_work("probe", [1], task="work_sync")

    [start] = await host.wait_for_events("start", 1)
    assert start["thread"] != "MainThread"
    await host.async_wait_for_log("ACKed message m-1")


async def test_a_message_without_content_type_is_handled(
    host: HostProcess, amqp: AmqpClient
) -> None:
    await amqp.publish(b'{"task": "work", "payload": {"id": 5}}', "probe", message_id="raw")

    await host.async_wait_for_log("ACKed message raw")
