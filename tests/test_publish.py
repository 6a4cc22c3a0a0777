"""``publish_task``: persistent JSON, confirmed by the broker, routed or an exception.

It runs in this test process, configured only by RABBITWORKER_AMQP_URL (the ``amqp_url``
fixture points it at the test's vhost); another client checks what reached the broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import pytest
from aio_pika import DeliveryMode, ExchangeType
from brokertools import AmqpClient

import rabbitworker
from rabbitworker import PublishError, UnroutableMessageError, close_publishers, publish_task
from rabbitworker.publish import get_publisher

pytestmark = pytest.mark.broker

MESSAGE = {"task": "generate_report", "payload": {"report_id": 42, "tags": ["a", "é"]}}


@pytest.fixture(autouse=True)
async def bound_queue(amqp_url: str, amqp: AmqpClient) -> AsyncIterator[str]:
    """The ``tasks`` exchange with a queue bound as ``reports``, as the host would declare
    them; the publisher is closed after each test."""
    exchange = await amqp.channel.declare_exchange("tasks", ExchangeType.DIRECT, durable=True)
    queue = await amqp.channel.declare_queue("reports.queue", durable=True)
    await queue.bind(exchange, "reports")
    yield "reports.queue"
    await close_publishers()


async def test_the_message_is_in_the_queue_when_publish_task_returns(amqp: AmqpClient) -> None:
    await publish_task(MESSAGE, "reports")

    assert await amqp.ready("reports.queue") == 1


async def test_the_message_is_persistent_json_with_the_dict_as_body(amqp: AmqpClient) -> None:
    await publish_task(MESSAGE, "reports")

    [message] = await amqp.take_all("reports.queue")
    assert message.delivery_mode == DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert json.loads(message.body) == MESSAGE


async def test_an_unroutable_routing_key_raises_unroutable_message_error(
    amqp: AmqpClient,
) -> None:
    with pytest.raises(rabbitworker.UnroutableMessageError) as caught:
        await publish_task(MESSAGE, "no-queue-is-bound-with-this-key")

    assert isinstance(caught.value, rabbitworker.PublishError)
    assert "no-queue-is-bound-with-this-key" in str(caught.value)
    assert await amqp.ready("reports.queue") == 0


def test_unroutable_message_error_is_a_publish_error() -> None:
    assert issubclass(UnroutableMessageError, PublishError)


async def test_a_missing_exchange_raises_publish_error() -> None:
    with pytest.raises(PublishError, match="no-such-exchange"):
        await publish_task(MESSAGE, "reports", exchange_name="no-such-exchange")


async def test_a_failed_publish_does_not_break_the_next_one(amqp: AmqpClient) -> None:
    with pytest.raises(PublishError):
        await publish_task(MESSAGE, "reports", exchange_name="no-such-exchange")
    with pytest.raises(UnroutableMessageError):
        await publish_task(MESSAGE, "unbound")

    await publish_task(MESSAGE, "reports")

    assert await amqp.ready("reports.queue") == 1


async def test_exchange_name_selects_another_exchange(amqp: AmqpClient) -> None:
    other = await amqp.channel.declare_exchange("billing", ExchangeType.DIRECT, durable=True)
    queue = await amqp.channel.declare_queue("invoices.queue", durable=True)
    await queue.bind(other, "invoices")

    await publish_task(MESSAGE, "invoices", exchange_name="billing")

    assert await amqp.ready("invoices.queue") == 1
    assert await amqp.ready("reports.queue") == 0


async def test_calls_share_one_publisher_and_one_connection() -> None:
    await publish_task(MESSAGE, "reports")
    publisher = get_publisher()
    connection = publisher.connection

    for _ in range(5):
        await publish_task(MESSAGE, "reports")

    assert get_publisher() is publisher
    assert publisher.connection is connection
    assert connection is not None
    assert not connection.is_closed


async def test_concurrent_calls_are_all_confirmed_and_delivered(amqp: AmqpClient) -> None:
    await asyncio.gather(
        *(publish_task({"task": "t", "payload": {"n": n}}, "reports") for n in range(20))
    )

    messages = await amqp.take_all("reports.queue")
    assert sorted(json.loads(m.body)["payload"]["n"] for m in messages) == list(range(20))


async def run_script(script: str, amqp_url: str) -> tuple[int, str]:
    """Run ``script`` in a fresh process configured only by RABBITWORKER_AMQP_URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITWORKER_")}
    env["RABBITWORKER_AMQP_URL"] = amqp_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


#: The whole of a user's script: no set-up call, no clean-up call.
USER_SCRIPT = (
    "import asyncio, rabbitworker\n"
    "asyncio.run(rabbitworker.publish_task({'task': 'generate_report'}, 'reports'))\n"
)


async def test_it_needs_no_set_up_beyond_rabbitworker_amqp_url(
    amqp: AmqpClient, amqp_url: str
) -> None:
    code, stderr = await run_script(USER_SCRIPT, amqp_url)

    assert code == 0, stderr
    [message] = await amqp.take_all("reports.queue")
    assert json.loads(message.body) == {"task": "generate_report"}


async def test_a_script_that_never_closes_the_publisher_exits_without_a_traceback(
    amqp_url: str,
) -> None:
    script = USER_SCRIPT * 2  # two event loops, one after the other

    code, stderr = await run_script(script, amqp_url)

    assert code == 0
    assert "Traceback" not in stderr, stderr
    assert "Task was destroyed" not in stderr, stderr
