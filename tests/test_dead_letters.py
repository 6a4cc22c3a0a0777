"""A message that cannot be handled goes to its queue's DLQ, unchanged and annotated, once.

Bad messages are published as raw bytes, the way any other client could. Where a good
message follows them, prefetch 1 means it is only delivered once the bad ones were settled,
so its acknowledgement shows the host went on consuming.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from brokertools import AmqpClient, HostProcess, async_wait_for

pytestmark = pytest.mark.broker

#: (case id, body as published, the reason header the DLQ copy must carry)
BAD_MESSAGES = [
    ("handler-raises", b'{"task":  "fail", "payload": {"error": "declined"}}', "handler-error"),
    ("unknown-task", b'{"task": "no_such_task", "payload": {"id": 1}}', "unknown-task"),
    ("missing-task", b'{"payload": {"id": 1}}', "missing-task"),
    ("task-not-a-string", b'{"task": 42, "payload": {"id": 1}}', "invalid-task"),
    ("body-not-json", b"task=work&id=1", "invalid-json"),
    ("body-not-utf8", b'{"task": "work", "x": "\xff\xfe"}', "invalid-utf8"),
    ("json-array", b'["work", {"id": 1}]', "not-an-object"),
    ("json-string", b'"work"', "not-an-object"),
]  # fmt: skip


CASE_IDS = [case[0] for case in BAD_MESSAGES]


async def dead_letters(amqp: AmqpClient, dlq: str, count: int = 1) -> list[Any]:
    await async_wait_for(
        lambda: _at_least(amqp, dlq, count), message=f"{count} message(s) in {dlq}"
    )
    return await amqp.take_all(dlq)


async def _at_least(amqp: AmqpClient, queue: str, count: int) -> bool:
    return await amqp.ready(queue) >= count


@pytest.fixture
def host(start_host: Callable[..., HostProcess]) -> HostProcess:
    return start_host([{"name": "probe.q", "routing_key": "probe"}])


@pytest.mark.parametrize(("body", "reason"), [c[1:] for c in BAD_MESSAGES], ids=CASE_IDS)
async def test_bad_message_lands_in_the_dlq_unchanged_naming_its_queue_and_reason(
    host: HostProcess, amqp: AmqpClient, body: bytes, reason: str
) -> None:
    await amqp.publish(body, "probe", message_id="bad-1")

    [copy] = await dead_letters(amqp, "tasks.dlq")
    assert copy.body == body
    assert copy.message_id == "bad-1"
    assert copy.headers["x-rabbitworker-queue"] == "probe.q"
    assert copy.headers["x-rabbitworker-reason"] == reason
    assert copy.headers["x-rabbitworker-error"], "a readable explanation of the failure"


async def test_host_keeps_consuming_after_every_kind_of_bad_message(
    host: HostProcess, amqp: AmqpClient
) -> None:
    for index, (_, body, _) in enumerate(BAD_MESSAGES):
        await amqp.publish(body, "probe", message_id=f"bad-{index}")
    await amqp.publish_work("probe", [100])

    [end] = await host.wait_for_events("end", 1)
    assert end["id"] == 100
    await host.async_wait_for_log("ACKed message m-100")
    assert host.process.poll() is None
    assert await amqp.ready("probe.q") == 0
    assert len(await dead_letters(amqp, "tasks.dlq", len(BAD_MESSAGES))) == len(BAD_MESSAGES)


async def test_every_bad_message_is_settled_once_never_requeued(
    host: HostProcess, amqp: AmqpClient
) -> None:
    for index, (_, body, _) in enumerate(BAD_MESSAGES):
        await amqp.publish(body, "probe", message_id=f"bad-{index}")
    await amqp.publish_work("probe", [100])
    await host.async_wait_for_log("ACKed message m-100")

    for index in range(len(BAD_MESSAGES)):
        assert len(host.log_lines(f"dead-lettered message bad-{index} ")) == 1
    assert not host.log_lines("redelivered")
    assert len(host.events("start")) == 2, "the raising handler and the good one, once each"


async def test_handler_exception_type_and_text_are_in_the_dlq_headers(
    host: HostProcess, amqp: AmqpClient
) -> None:
    await amqp.publish_work("probe", [7], task="fail")

    [copy] = await dead_letters(amqp, "tasks.dlq")
    assert copy.headers["x-rabbitworker-exception-type"] == "ValueError"
    assert copy.headers["x-rabbitworker-exception-message"] == "probe failure"
    assert copy.headers["x-rabbitworker-task"] == "fail"


async def test_a_raising_handler_runs_exactly_once(host: HostProcess, amqp: AmqpClient) -> None:
    await amqp.publish_work("probe", [1], task="fail")
    await amqp.publish_work("probe", [2])

    await host.wait_for_events("end", 1)
    starts = [e["id"] for e in host.events("start")]
    assert starts == [1, 2]


async def test_unknown_task_header_names_the_task(host: HostProcess, amqp: AmqpClient) -> None:
    await amqp.publish({"task": "no_such_task"}, "probe")

    [copy] = await dead_letters(amqp, "tasks.dlq")
    assert "no_such_task" in copy.headers["x-rabbitworker-error"]


async def test_a_queue_with_its_own_dlq_dead_letters_there_not_in_the_shared_one(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    host = start_host(
        [
            {"name": "probe.q", "routing_key": "probe"},
            {
                "name": "own.q",
                "routing_key": "own",
                "dlx_exchange_name": "own.dlx",
                "dlq_name": "own.dlq",
            },
        ]
    )

    await amqp.publish(b'{"task": "fail"}', "own", message_id="bad-1")
    await amqp.publish_work("own", [2])
    await host.async_wait_for_log("ACKed message m-2")

    [copy] = await dead_letters(amqp, "own.dlq")
    assert copy.headers["x-rabbitworker-queue"] == "own.q"
    assert await amqp.ready("tasks.dlq") == 0


async def test_queues_sharing_the_default_dlq_each_name_themselves_in_it(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    start_host([{"name": "a.q", "routing_key": "a"}, {"name": "b.q", "routing_key": "b"}])

    await amqp.publish(b'{"task": "fail"}', "a", message_id="from-a")
    await amqp.publish(b'{"task": "fail"}', "b", message_id="from-b")

    copies = await dead_letters(amqp, "tasks.dlq", count=2)
    assert {c.message_id: c.headers["x-rabbitworker-queue"] for c in copies} == {
        "from-a": "a.q",
        "from-b": "b.q",
    }
