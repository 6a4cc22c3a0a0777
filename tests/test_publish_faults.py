"""``publish_task`` under faults: forced connection closes, a broker alarm, concurrent
calls with one message id. It runs in this test process against the test's vhost
(``amqp_url`` sets RABBITWORKER_AMQP_URL); the management API and ``rabbitmqctl`` inject
the faults and read what the broker holds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika import ExchangeType
from brokertools import AmqpClient, Broker

import rabbitworker
from rabbitworker import PublishError, close_publishers, publish_task

# The fault suite's helpers (forced closes, the memory alarm) live beside its tests.
sys.path.insert(0, str(Path(__file__).parent / "faults"))
from faultkit import force_close_connections, memory_alarm

pytestmark = pytest.mark.broker

PUBLISHER = "rabbitworker publish_task"
BODY = {"task": "work", "payload": {}}


@pytest.fixture(autouse=True)
async def bound_queue(amqp_url: str, amqp: AmqpClient) -> AsyncIterator[str]:
    """The ``tasks`` exchange with ``faults.q`` bound as ``bound``; the publisher is closed
    after each test."""
    exchange = await amqp.channel.declare_exchange("tasks", ExchangeType.DIRECT, durable=True)
    queue = await amqp.channel.declare_queue("faults.q", durable=True)
    await queue.bind(exchange, "bound")
    yield "faults.q"
    await close_publishers()


_LIST_CONNECTIONS = ("rabbitmqctl", "list_connections", "-q", "--formatter", "json")


def _publisher_channels(vhost: str) -> list[int]:
    """Channels open on each publish_task connection of ``vhost``, as the broker itself
    counts them right now (rabbitmqctl, not the management API's lagging statistics)."""
    done = subprocess.run(
        [*_LIST_CONNECTIONS, "vhost", "channels", "client_properties"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [
        int(c["channels"])
        for c in json.loads(done.stdout)
        if c["vhost"] == vhost and PUBLISHER in json.dumps(c["client_properties"])
    ]


async def test_forced_closes_of_the_publisher_connection_leave_at_most_one_channel_open(
    broker: Broker, amqp: AmqpClient
) -> None:
    await publish_task(BODY, "bound", message_id="first")
    for round_ in range(3):
        await force_close_connections(broker, PUBLISHER)
        await publish_task(BODY, "bound", message_id=f"after-close-{round_}")

    channels = await asyncio.to_thread(_publisher_channels, broker.vhost)
    assert channels, "the publisher is connected"
    assert len(channels) == 1, f"one publisher connection, not {len(channels)}"
    assert channels[0] <= 1, f"{channels[0]} channels open on the publisher connection"
    assert await amqp.ready("faults.q") >= 4, "every publish stored (at least once)"


async def test_publish_task_raises_within_one_publish_timeout_in_total(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RABBITWORKER_PUBLISH_TIMEOUT", "2")
    await publish_task(BODY, "bound", message_id="warm-up")  # connected before the alarm

    raised_at: list[float] = []

    async def blocked() -> str:
        try:
            return await publish_task(BODY, "bound", message_id="blocked")
        finally:
            raised_at.append(time.monotonic())

    async with memory_alarm():  # no confirm comes while it lasts (6 s)
        started = time.monotonic()
        attempt = asyncio.create_task(blocked())
        await asyncio.sleep(1.0)  # hold the blocked publish, then lose its connection too
        await force_close_connections(broker, PUBLISHER)
        with pytest.raises(PublishError):
            await asyncio.wait_for(attempt, timeout=10)
        await asyncio.sleep(max(0.0, 6 - (time.monotonic() - started)))

    # When the call raised, not when the test looked: finding and closing the connection
    # through the management API may itself take past the 2 s on a loaded machine.
    took = raised_at[0] - started
    assert took < 2 + 0.7, f"raised after {took:.1f} s with RABBITWORKER_PUBLISH_TIMEOUT=2"


async def test_concurrent_publishes_with_one_message_id_raise_unroutable_for_the_unbound_one(
    amqp: AmqpClient,
) -> None:
    for round_ in range(10):
        message_id = f"same-{round_}"
        keys = ["bound", "unbound"] if round_ % 2 == 0 else ["unbound", "bound"]
        results: list[Any] = await asyncio.gather(
            *(publish_task(BODY, key, message_id=message_id) for key in keys),
            return_exceptions=True,
        )
        outcome = dict(zip(keys, results, strict=True))
        assert isinstance(outcome["unbound"], rabbitworker.UnroutableMessageError), (
            f"round {round_}: the unbound publish gave {outcome['unbound']!r}"
        )
        assert outcome["bound"] == message_id, (
            f"round {round_}: the bound publish gave {outcome['bound']!r}"
        )
    assert await amqp.ready("faults.q") == 10


async def test_a_confirm_lost_with_the_connection_raises_publish_uncertain_error(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rabbitworker import PublishUncertainError  # the new code's name

    monkeypatch.setenv("RABBITWORKER_PUBLISH_TIMEOUT", "10")
    await publish_task(BODY, "bound", message_id="warm-up")

    async with memory_alarm():  # the message is sent, but no confirm comes
        attempt = asyncio.create_task(publish_task(BODY, "bound", message_id="uncertain"))
        await asyncio.sleep(1.0)  # hold the blocked publish, then lose its connection
        await force_close_connections(broker, PUBLISHER)
        with pytest.raises(PublishError) as caught:
            await asyncio.wait_for(attempt, timeout=15)

    assert isinstance(caught.value, PublishUncertainError), repr(caught.value)
    assert not isinstance(caught.value, rabbitworker.PublishNotSentError)


async def test_errors_of_a_message_never_sent_say_a_retry_is_safe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rabbitworker import PublishNotSentError, PublishUncertainError  # the new code's names

    assert issubclass(PublishNotSentError, PublishError)
    assert issubclass(PublishUncertainError, PublishError)
    assert issubclass(rabbitworker.UnroutableMessageError, PublishNotSentError)
    with pytest.raises(PublishNotSentError):
        await publish_task(BODY, "unbound", message_id="unroutable")

    await close_publishers()
    monkeypatch.setenv("RABBITWORKER_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
    monkeypatch.setenv("RABBITWORKER_CONNECT_TIMEOUT", "2")
    with pytest.raises(PublishNotSentError):
        await publish_task(BODY, "bound", message_id="no-broker")
