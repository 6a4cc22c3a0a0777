"""``rabbitworker-host dlq show | replay | purge`` against dead letters a real host made.

The DLQ's order is made deterministic by publishing each message only once the one before
reached the DLQ; queue contents are read back with AMQP, in order, at the end of a test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from brokertools import AmqpClient, Broker, HostProcess, host_env
from opstools import (
    DLQ,
    OTHER_Q,
    PROBE_Q,
    cli_json,
    dead_letter_in_order,
    declare_like_the_host,
    delete_queue,
    send,
    take_ids,
    wait_ready,
)

pytestmark = pytest.mark.broker

RunCli = Callable[..., subprocess.CompletedProcess[str]]
StartHost = Callable[..., HostProcess]

#: Dead letters from two queues and of two causes, in DLQ order: (routing key, id, task).
MIXED = [
    ("probe", "p-1", "fail"),
    ("other", "o-1", "fail"),
    ("probe", "p-2", "nope"),
    ("other", "o-2", "fail"),
    ("probe", "p-3", "fail"),
]


async def mixed_dead_letters(start_host: StartHost, amqp: AmqpClient) -> list[str]:
    """Fill ``tasks.dlq`` with :data:`MIXED` through a real host, then stop the host so
    replayed messages stay in their queues to be counted."""
    host = start_host([PROBE_Q, OTHER_Q])
    ids = await dead_letter_in_order(amqp, MIXED)
    assert await host.async_stop() == 0
    return ids


# -- show ----------------------------------------------------------------------------------


async def test_dlq_show_json_gives_task_source_queue_reason_attempts_time_id_and_body(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    start_host([{**PROBE_Q, "max_retries": 1, "retry_delays": [0.05]}])
    before = datetime.now(UTC)
    await send(amqp, "probe", "m-1", "fail", error="disk full")
    await wait_ready(amqp, DLQ, 1)

    result = await asyncio.to_thread(
        run_cli, "dlq", "show", DLQ, "--json", amqp_url=broker.amqp_url
    )

    [letter] = cli_json(result)
    assert letter["position"] == 1
    assert letter["task"] == "fail"
    assert letter["source_queue"] == "probe.q"
    assert letter["reason"] == "handler-error"
    assert letter["error"] == "ValueError: disk full"
    assert letter["attempts"] == 2
    assert letter["message_id"] == "m-1"
    assert letter["body"] == {"task": "fail", "payload": {"id": "m-1", "error": "disk full"}}
    assert before <= datetime.fromisoformat(letter["dead_lettered_at"]) <= datetime.now(UTC)


async def test_dlq_show_table_has_a_row_per_dead_letter_with_its_reason_and_error(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    start_host([PROBE_Q])
    await dead_letter_in_order(amqp, [("probe", "p-1", "fail"), ("probe", "p-2", "nope")])

    result = await asyncio.to_thread(run_cli, "dlq", "show", DLQ, amqp_url=broker.amqp_url)

    assert result.returncode == 0, result.stderr
    assert "tasks.dlq: 2 dead letter(s) shown" in result.stdout
    first = next(line for line in result.stdout.splitlines() if "p-1" in line)
    second = next(line for line in result.stdout.splitlines() if "p-2" in line)
    for text in ("fail", "probe.q", "handler-error", "ValueError: probe failure"):
        assert text in first
    for text in ("nope", "probe.q", "unknown-task"):
        assert text in second


async def test_dlq_show_leaves_the_dlq_with_the_same_messages_in_the_same_order(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    ids = await mixed_dead_letters(start_host, amqp)

    table = await asyncio.to_thread(run_cli, "dlq", "show", DLQ, amqp_url=broker.amqp_url)
    shown = await asyncio.to_thread(run_cli, "dlq", "show", DLQ, "--json", amqp_url=broker.amqp_url)

    assert table.returncode == 0, table.stderr
    assert [letter["message_id"] for letter in cli_json(shown)] == ids
    assert await take_ids(amqp, DLQ) == ids


async def test_dlq_show_limit_shows_the_oldest_n_and_leaves_all_of_them(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    ids = await mixed_dead_letters(start_host, amqp)

    result = await asyncio.to_thread(
        run_cli, "dlq", "show", DLQ, "--limit", "2", "--json", amqp_url=broker.amqp_url
    )

    assert [letter["message_id"] for letter in cli_json(result)] == ["p-1", "o-1"]
    assert await take_ids(amqp, DLQ) == ids


def test_dlq_show_of_a_queue_that_does_not_exist_exits_3_naming_it(
    run_cli: RunCli, broker: Broker
) -> None:
    result = run_cli("dlq", "show", "no.such.dlq", amqp_url=broker.amqp_url)

    assert result.returncode == 3
    assert "'no.such.dlq' does not exist" in result.stderr


# -- replay --------------------------------------------------------------------------------


async def test_dlq_replay_sends_each_dead_letter_back_to_be_handled_exactly_once_more(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    host = start_host([PROBE_Q])
    ids = await dead_letter_in_order(amqp, [("probe", f"p-{i}", "fail") for i in range(1, 4)])

    result = await asyncio.to_thread(run_cli, "dlq", "replay", DLQ, amqp_url=broker.amqp_url)

    assert result.returncode == 0, result.stderr
    assert "replayed 3, left 0 (not selected), failed 0" in result.stdout
    await host.wait_for_events("start", 6)
    # They fail again: once all three are back, nothing else is in flight.
    await wait_ready(amqp, DLQ, 3)
    assert await host.async_stop() == 0
    assert Counter(e["id"] for e in host.events("start")) == dict.fromkeys(ids, 2)
    assert await take_ids(amqp, DLQ) == ids


async def test_a_replayed_message_keeps_body_and_id_and_only_names_the_dlq_it_came_from(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    await mixed_dead_letters(start_host, amqp)

    result = await asyncio.to_thread(
        run_cli, "dlq", "replay", DLQ, "--limit", "1", amqp_url=broker.amqp_url
    )

    assert result.returncode == 0, result.stderr
    [message] = await amqp.take_all("probe.q")
    assert message.message_id == "p-1"
    assert json.loads(message.body) == {"task": "fail", "payload": {"id": "p-1"}}
    assert message.headers == {"x-rabbitworker-replayed-from": DLQ}


async def test_dlq_replay_queue_moves_only_that_queues_dead_letters_and_keeps_the_rest_in_order(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    await mixed_dead_letters(start_host, amqp)

    result = await asyncio.to_thread(
        run_cli, "dlq", "replay", DLQ, "--queue", "other.q", amqp_url=broker.amqp_url
    )

    assert result.returncode == 0, result.stderr
    assert "replayed 2, left 3 (not selected), failed 0" in result.stdout
    assert await take_ids(amqp, "other.q") == ["o-1", "o-2"]
    assert await take_ids(amqp, "probe.q") == []
    assert await take_ids(amqp, DLQ) == ["p-1", "p-2", "p-3"]


async def test_dlq_replay_task_moves_only_that_tasks_dead_letters_and_keeps_the_rest_in_order(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    await mixed_dead_letters(start_host, amqp)

    result = await asyncio.to_thread(
        run_cli, "dlq", "replay", DLQ, "--task", "nope", amqp_url=broker.amqp_url
    )

    assert result.returncode == 0, result.stderr
    assert "replayed 1, left 4 (not selected), failed 0" in result.stdout
    assert await take_ids(amqp, "probe.q") == ["p-2"]
    assert await take_ids(amqp, DLQ) == ["p-1", "o-1", "o-2", "p-3"]


async def test_dlq_replay_limit_moves_the_oldest_n_and_keeps_the_rest_in_order(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    await mixed_dead_letters(start_host, amqp)

    result = await asyncio.to_thread(
        run_cli, "dlq", "replay", DLQ, "--limit", "2", amqp_url=broker.amqp_url
    )

    assert result.returncode == 0, result.stderr
    assert await take_ids(amqp, "probe.q") == ["p-1"]
    assert await take_ids(amqp, "other.q") == ["o-1"]
    assert await take_ids(amqp, DLQ) == ["p-2", "o-2", "p-3"]


async def test_dlq_replay_filters_combine_with_limit(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    await mixed_dead_letters(start_host, amqp)

    result = await asyncio.to_thread(
        run_cli,
        "dlq",
        "replay",
        DLQ,
        "--queue",
        "probe.q",
        "--task",
        "fail",
        "--limit",
        "1",
        amqp_url=broker.amqp_url,
    )

    assert result.returncode == 0, result.stderr
    assert await take_ids(amqp, "probe.q") == ["p-1"]
    assert await take_ids(amqp, DLQ) == ["o-1", "p-2", "o-2", "p-3"]


async def test_dlq_replay_to_a_missing_queue_exits_1_and_keeps_those_dead_letters_in_order(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    await mixed_dead_letters(start_host, amqp)
    delete_queue(broker, "probe.q")

    result = await asyncio.to_thread(
        run_cli, "dlq", "replay", DLQ, "--json", amqp_url=broker.amqp_url
    )

    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["replayed"], report["failed"]) == (2, 3)
    assert len(report["problems"]) == 3
    assert all("'probe.q' does not exist" in problem for problem in report["problems"])
    assert await take_ids(amqp, "other.q") == ["o-1", "o-2"]
    assert await take_ids(amqp, DLQ) == ["p-1", "p-2", "p-3"]


async def test_dlq_replay_after_the_missing_queue_is_back_moves_each_dead_letter_exactly_once(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    await mixed_dead_letters(start_host, amqp)
    delete_queue(broker, "probe.q")
    failed = await asyncio.to_thread(run_cli, "dlq", "replay", DLQ, amqp_url=broker.amqp_url)
    assert failed.returncode == 1
    assert "failed 3" in failed.stdout
    await declare_like_the_host(broker.amqp_url, [PROBE_Q])

    result = await asyncio.to_thread(run_cli, "dlq", "replay", DLQ, amqp_url=broker.amqp_url)

    assert result.returncode == 0, result.stderr
    assert "replayed 3, left 0 (not selected), failed 0" in result.stdout
    assert await take_ids(amqp, "probe.q") == ["p-1", "p-2", "p-3"]
    assert await take_ids(amqp, "other.q") == ["o-1", "o-2"]
    assert await amqp.ready(DLQ) == 0


# -- purge ---------------------------------------------------------------------------------


async def test_dlq_purge_answered_no_deletes_nothing_and_exits_non_zero(
    start_host: StartHost, amqp: AmqpClient, broker: Broker
) -> None:
    ids = await mixed_dead_letters(start_host, amqp)

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "rabbitworker", "dlq", "purge", DLQ],
        input="n\n",
        env=host_env(broker.amqp_url, RABBITWORKER_PLUGINS=""),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )

    assert result.returncode != 0
    assert "Delete every message in tasks.dlq" in result.stdout
    assert "Aborted" in result.stderr
    assert await take_ids(amqp, DLQ) == ids


async def test_dlq_purge_yes_empties_the_dlq_and_says_how_many(
    start_host: StartHost, amqp: AmqpClient, run_cli: RunCli, broker: Broker
) -> None:
    await mixed_dead_letters(start_host, amqp)

    result = await asyncio.to_thread(
        run_cli, "dlq", "purge", DLQ, "--yes", amqp_url=broker.amqp_url
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "purged 5 message(s) from tasks.dlq"
    assert await amqp.ready(DLQ) == 0
