"""RABBITWORKER_LOG_FORMAT=json: one JSON object per line, message facts as fields."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from brokertools import AmqpClient, HostProcess
from opstools import DLQ, PROBE_Q, send, wait_ready

RunCli = Callable[..., subprocess.CompletedProcess[str]]
JSON_LOGS = {"RABBITWORKER_LOG_FORMAT": "json"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line as a JSON object; fails on the first line that is not one."""
    objects = []
    for line in text.splitlines():
        value = json.loads(line)
        assert isinstance(value, dict), line
        objects.append(value)
    return objects


async def handled_one_ok_and_one_failing(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> list[dict[str, Any]]:
    """The host's log lines, once it handled ``ok-1`` and dead-lettered ``bad-1`` and stopped."""
    host = start_host([PROBE_Q], **JSON_LOGS)
    await send(amqp, "probe", "ok-1", "work")
    await send(amqp, "probe", "bad-1", "fail", error="no such user")
    await host.wait_for_events("end", 1)
    await wait_ready(amqp, DLQ, 1)
    assert await host.async_stop() == 0
    return json_lines(host.log)


@pytest.mark.broker
async def test_every_line_the_host_writes_is_one_json_object_with_time_level_and_message(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    lines = await handled_one_ok_and_one_failing(start_host, amqp)

    assert len(lines) > 5
    for line in lines:
        assert {"time", "level", "message"} <= set(line)
    assert any(line["message"] == "consuming from 1 queue(s)" for line in lines)


@pytest.mark.broker
async def test_an_acked_messages_line_has_queue_task_message_id_outcome_and_duration_fields(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    lines = await handled_one_ok_and_one_failing(start_host, amqp)

    [acked] = [line for line in lines if line.get("outcome") == "acked"]
    assert (acked["queue"], acked["task"], acked["message_id"]) == ("probe.q", "work", "ok-1")
    assert isinstance(acked["duration_ms"], int | float)
    assert acked["duration_ms"] >= 0
    assert acked["level"] == "INFO"


@pytest.mark.broker
async def test_a_dead_lettered_messages_line_has_its_fields_and_reason(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    lines = await handled_one_ok_and_one_failing(start_host, amqp)

    [dead] = [line for line in lines if line.get("outcome") == "dead-lettered"]
    assert (dead["queue"], dead["task"], dead["message_id"]) == ("probe.q", "fail", "bad-1")
    assert dead["reason"] == "handler-error"
    assert dead["detail"] == "ValueError: no such user"
    assert isinstance(dead["duration_ms"], int | float)
    assert dead["level"] == "WARNING"


def test_a_command_logs_json_lines_on_stderr_and_keeps_stdout_for_its_data(
    run_cli: RunCli,
) -> None:
    result = run_cli("queues", "--json", queues=[PROBE_Q], **JSON_LOGS)

    assert result.returncode == 0, result.stderr
    assert [row["queue"] for row in json.loads(result.stdout)] == ["probe.q"]
    [line] = json_lines(result.stderr)
    assert line["message"] == "probe plugin contributes 1 queue(s)"
    assert line["level"] == "INFO"
