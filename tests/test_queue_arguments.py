"""Queue arguments as QueueConfig fields: validated when the config is built, declared on the
broker, and doing on the broker what RabbitMQ says they do."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from brokertools import AmqpClient, Broker, HostProcess, async_wait_for
from opstools import declare_like_the_host

from rabbitworker import InvalidQueueConfigError, PublishRefusedError, QueueConfig
from rabbitworker.publish import close_publishers, publish_task
from rabbitworker.topology import queue_arguments


async def noop(message: dict[str, Any]) -> None: ...


def config(**fields: Any) -> QueueConfig:
    return QueueConfig(name="a.q", routing_key="a", task_handlers={"t": noop}, **fields)


# -- validation, pure ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_priority": 0}, "max_priority"),
        ({"max_priority": 256}, "max_priority"),
        ({"max_priority": 5, "queue_type": "quorum"}, "max_priority"),
        ({"message_ttl": 0}, "message_ttl"),
        ({"message_ttl": "soon"}, "message_ttl"),
        ({"max_length": -1}, "max_length"),
        ({"max_length_bytes": 1.5}, "max_length_bytes"),
        ({"overflow": "drop-tail"}, "overflow"),
        ({"overflow": "drop-head", "queue_type": "quorum"}, "overflow"),
        ({"single_active_consumer": "yes"}, "single_active_consumer"),
        ({"arguments": {"max-age": 1}}, "arguments"),
        ({"arguments": {"x-max-length": 5}}, "arguments"),
        ({"arguments": {"x-queue-type": "stream"}}, "arguments"),
    ],
)
def test_an_argument_the_broker_would_refuse_is_refused_when_the_config_is_built(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidQueueConfigError) as refused:
        config(**fields)

    assert refused.value.field == field
    assert repr(field) in str(refused.value)


def test_the_fields_become_the_queues_x_arguments() -> None:
    arguments = queue_arguments(
        config(
            max_priority=10,
            message_ttl=1.5,
            max_length=100,
            max_length_bytes=10_000,
            overflow="reject-publish",
            single_active_consumer=True,
            arguments={"x-queue-mode": "lazy"},
        )
    )

    assert arguments == {
        "x-dead-letter-exchange": "tasks.dlx",
        "x-max-priority": 10,
        "x-message-ttl": 1500,
        "x-max-length": 100,
        "x-max-length-bytes": 10_000,
        "x-overflow": "reject-publish",
        "x-single-active-consumer": True,
        "x-queue-mode": "lazy",
    }


def test_a_queue_without_them_is_declared_as_before() -> None:
    assert queue_arguments(config()) == {"x-dead-letter-exchange": "tasks.dlx"}


def test_queues_json_shows_them(run_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    queue = {"name": "p.q", "routing_key": "p", "max_priority": 5, "max_length": 10}

    result = run_cli("queues", "--json", queues=[queue])

    [row] = json.loads(result.stdout)
    assert (row["max_priority"], row["max_length"], row["overflow"]) == (5, 10, None)
    table = run_cli("queues", queues=[queue]).stdout
    assert "max_priority 5" in table
    assert "max_length 10" in table


def test_a_deployment_override_changes_one_and_is_validated(
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    queue = {"name": "p.q", "routing_key": "p"}
    ok = run_cli(
        "queues", "--json", queues=[queue], RABBITWORKER_QUEUES='{"p.q": {"max_length": 7}}'
    )
    refused = run_cli(
        "queues",
        queues=[{**queue, "queue_type": "quorum"}],
        RABBITWORKER_QUEUES='{"p.q": {"overflow": "drop-head"}}',
    )

    assert json.loads(ok.stdout)[0]["max_length"] == 7
    assert refused.returncode == 3
    assert "overflow" in refused.stderr


# -- on the broker -------------------------------------------------------------------------


@pytest.mark.broker
async def test_a_priority_queue_delivers_higher_priorities_first(
    start_host: Callable[..., HostProcess], amqp_url: str, amqp: AmqpClient
) -> None:
    queue = {"name": "prio.q", "routing_key": "prio", "max_priority": 10}
    await declare_like_the_host(amqp_url, [queue])
    try:
        for index, priority in enumerate([1, 5, 9, 1, 9, 5]):
            body = {"task": "work", "payload": {"id": index}}
            await publish_task(body, "prio", message_id=f"m-{index}", priority=priority)
    finally:
        await close_publishers()

    host = start_host([{**queue, "prefetch_count": 1}])
    ends = await host.wait_for_events("end", 6)

    assert [e["id"] for e in ends] == [2, 4, 1, 5, 0, 3], "9, 9, 5, 5, 1, 1: FIFO within one"


@pytest.mark.broker
async def test_a_message_past_its_ttl_reaches_the_dlq_with_the_reason_expired(
    amqp_url: str, amqp: AmqpClient, broker: Broker
) -> None:
    await declare_like_the_host(
        amqp_url, [{"name": "ttl.q", "routing_key": "ttl", "message_ttl": 0.3}]
    )
    try:
        await publish_task({"task": "work", "payload": {}}, "ttl", message_id="stale")
    finally:
        await close_publishers()

    await async_wait_for(lambda: amqp.ready("tasks.dlq"), within=10, message="the dead letter")
    [dead] = await amqp.take_all("tasks.dlq")
    [death] = (dead.headers or {})["x-death"]
    assert (dead.message_id, death["reason"], death["queue"]) == ("stale", "expired", "ttl.q")
    assert await amqp.ready("ttl.q") == 0


@pytest.mark.broker
async def test_reject_publish_makes_publish_task_raise_a_clear_error(
    amqp_url: str, amqp: AmqpClient
) -> None:
    queue = {"name": "full.q", "routing_key": "full", "max_length": 1, "overflow": "reject-publish"}
    await declare_like_the_host(amqp_url, [queue])
    try:
        await publish_task({"task": "work", "payload": {}}, "full", message_id="first")
        with pytest.raises(PublishRefusedError, match="reject-publish") as refused:
            await publish_task({"task": "work", "payload": {}}, "full", message_id="second")
    finally:
        await close_publishers()

    assert "not stored" in str(refused.value)
    [kept] = await amqp.take_all("full.q")
    assert kept.message_id == "first"


@pytest.mark.broker
async def test_with_a_single_active_consumer_a_second_host_stands_by_and_takes_over_in_order(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    queue = {"name": "sac.q", "routing_key": "sac", "single_active_consumer": True}
    first = start_host([queue])
    second = start_host([queue])
    await amqp.publish_work("sac", range(20), sleep=0.1)
    await first.wait_for_events("end", 5)

    assert {e["pid"] for e in first.events("start")} == {first.process.pid}, "one at a time"
    killed = time.monotonic()
    assert await first.async_stop(signal.SIGKILL) == -signal.SIGKILL
    starts = await second.wait_for_events("start", 1 + len(first.events("start")), within=30)
    took_over = next(e["t"] for e in starts if e["pid"] == second.process.pid) - killed
    ends = await second.wait_for_events("end", 20, within=30)
    print(f"single active consumer: the stand-by took over {took_over:.2f} s after the kill")

    handled = [e["id"] for e in ends]
    first_ids = [e["id"] for e in ends if e["pid"] == first.process.pid]
    second_ids = [e["id"] for e in ends if e["pid"] == second.process.pid]
    assert sorted(set(handled)) == list(range(20)), "none lost"
    assert first_ids == sorted(first_ids), "in order"
    assert second_ids == sorted(second_ids), "in order after the takeover"
    assert second_ids[0] >= len(first_ids), "it takes over where the first stopped"
    assert took_over < 10
    assert await second.async_stop() == 0
    assert await amqp.ready("sac.q") == 0
