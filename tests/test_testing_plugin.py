"""The pytest plugin for plugin authors: in-process outcomes agree with a real broker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

CASES: list[tuple[str, dict[str, Any], str, str | None, int]] = [
    ("success", {"task": "greet", "payload": {"name": "Ada", "times": 2}}, "acked", None, 1),
    ("plain def handler", {"task": "greet_sync", "payload": {"name": "Bob"}}, "acked", None, 1),
    (
        "handler error",
        {"task": "explode", "payload": {"n": 1}},
        "dead-lettered",
        "handler-error",
        2,
    ),
    (
        "validation error",
        {"task": "greet", "payload": {"name": ""}},
        "dead-lettered",
        "invalid-payload",
        1,
    ),
    ("unknown task", {"task": "nope", "payload": {}}, "dead-lettered", "unknown-task", 0),
]


@pytest.mark.parametrize(
    ("body", "settlement", "reason", "attempts"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_in_process_worker_settles_like_production(
    rabbitworker_worker, body: dict[str, Any], settlement: str, reason: str | None, attempts: int
) -> None:
    worker = await rabbitworker_worker("typed_plugin")

    result = await worker.push(body, routing_key="typed")

    assert (result.settlement, result.reason, result.attempts) == (settlement, reason, attempts)


async def test_typed_handler_gets_a_validated_model_and_its_context(rabbitworker_worker) -> None:
    worker = await rabbitworker_worker("typed_plugin")

    result = await worker.push(
        {"task": "greet", "payload": {"name": "Ada", "times": 2}}, queue="typed.queue"
    )

    assert result.result == {"text": "hello Ada, hello Ada", "attempt": 1, "queue": "typed.queue"}


async def test_validation_failure_names_the_field_and_is_not_retried(rabbitworker_worker) -> None:
    worker = await rabbitworker_worker("typed_plugin")

    result = await worker.push({"task": "greet", "payload": {"times": "x"}}, routing_key="typed")

    assert result.reason == "invalid-payload"
    assert result.detail is not None
    assert "name" in result.detail
    assert "times" in result.detail
    assert result.headers["x-rabbitworker-attempts"] == 1


@pytest.mark.broker
@pytest.mark.parametrize(
    ("body", "settlement", "reason", "attempts"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_broker_host_gives_the_same_outcomes(
    management_api: str,
    rabbitworker_broker_host,
    body: dict[str, Any],
    settlement: str,
    reason: str | None,
    attempts: int,
) -> None:
    host = await rabbitworker_broker_host("typed_plugin")

    message_id = await host.publish(body, "typed")
    result = await host.wait_for(message_id)

    assert (result.settlement, result.reason, result.attempts) == (settlement, reason, attempts)
    if settlement == "dead-lettered":
        [(body_of_dead_letter, headers)] = await host.dead_letters()
        assert body_of_dead_letter == orjson.dumps(body)
        assert headers["x-rabbitworker-reason"] == reason
