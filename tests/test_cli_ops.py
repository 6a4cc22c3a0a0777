"""The operator's commands end to end: ``plugins``, ``topology``, ``check`` and ``publish``.

Commands that need no broker are run with RABBITWORKER_AMQP_URL pointing at a closed port,
which proves they never connect.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
from brokertools import AmqpClient, Broker, HostProcess
from opstools import (
    DLQ,
    OTHER_Q,
    PROBE_Q,
    cli_json,
    declare_like_the_host,
    send,
    table_cells,
    wait_ready,
)

RunCli = Callable[..., subprocess.CompletedProcess[str]]

#: The probe plugin with one queue on the shared DLQ and one with its own DLX and DLQ.
TWO_QUEUES = [
    PROBE_Q,
    {
        "name": "own.q",
        "routing_key": "own.key",
        "prefetch_count": 4,
        "dlx_exchange_name": "own.dlx",
        "dlq_name": "own.dlq",
    },
]

#: Only the installed (bundled) plugins, as an operator's deployment would load them.
AUTOLOAD = {"RABBITWORKER_DISABLE_PLUGIN_AUTOLOAD": "0", "RABBITWORKER_PLUGINS": ""}


# -- plugins -------------------------------------------------------------------------------


def test_plugins_json_gives_each_installed_plugin_its_distribution_version_queues_and_tasks(
    run_cli: RunCli,
) -> None:
    plugins = {row["name"]: row for row in cli_json(run_cli("plugins", "--json", **AUTOLOAD))}

    assert plugins["notifications"] == {
        "name": "notifications",
        "distribution": "rabbitworker-notifications",
        "version": version("rabbitworker-notifications"),
        "module": "rabbitworker_notifications",
        "queues": ["notifications.queue", "tasks.main"],
        "tasks": ["send_email", "send_push", "send_sms"],
    }
    assert plugins["reports"]["queues"] == ["reports.queue"]
    assert plugins["reports"]["tasks"] == ["export_data", "generate_report"]
    assert plugins["analytics"]["queues"] == ["analytics.queue"]
    assert plugins["analytics"]["tasks"] == ["track_event"]


def test_plugins_json_lists_the_builtin_plugins_first_and_then_the_installed_ones_by_name(
    run_cli: RunCli,
) -> None:
    names = [row["name"] for row in cli_json(run_cli("plugins", "--json", **AUTOLOAD))]

    assert names == [
        "rabbitworker.messagelog",
        "rabbitworker.tracing",
        "analytics",
        "notifications",
        "reports",
    ]


def test_plugins_table_shows_one_row_per_plugin_with_distribution_and_version(
    run_cli: RunCli,
) -> None:
    result = run_cli("plugins", **AUTOLOAD)

    assert result.returncode == 0, result.stderr
    reports_row = next(
        line for line in result.stdout.splitlines() if "rabbitworker-reports" in line
    )
    for text in ("reports", version("rabbitworker-reports"), "reports.queue", "export_data"):
        assert text in reports_row
    assert "notifications.queue, tasks.main" in result.stdout


# -- topology ------------------------------------------------------------------------------


def test_topology_text_draws_exchange_queue_dlx_and_dlq_without_a_broker(run_cli: RunCli) -> None:
    result = run_cli("topology", "--format", "text", queues=[PROBE_Q])

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "tasks (direct) --> probe.q  [probe]",
        "probe.q ~~> tasks.dlx (fanout)  [dead letters]",
        "tasks.dlx (fanout) --> tasks.dlq",
    ]


def test_topology_mermaid_is_a_flowchart_of_every_queue_and_its_own_dlx(run_cli: RunCli) -> None:
    result = run_cli("topology", "--format", "mermaid", queues=TWO_QUEUES)

    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[0] == "flowchart LR"
    assert {
        "x_tasks -- probe --> q_probe_q",
        "q_probe_q -. dead letters .-> x_tasks_dlx",
        "x_tasks_dlx --> q_tasks_dlq",
        "x_tasks -- own.key --> q_own_q",
        "q_own_q -. dead letters .-> x_own_dlx",
        "x_own_dlx --> q_own_dlq",
    } <= set(lines)
    assert 'q_own_q["own.q<br/>prefetch 4: fail, work, work_sync"]' in lines


def test_topology_dot_is_a_digraph_with_dashed_dead_letter_edges(run_cli: RunCli) -> None:
    result = run_cli("topology", "--format", "dot", queues=TWO_QUEUES)

    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[0] == "digraph rabbitworker {"
    assert lines[-1] == "}"
    assert {
        'x_tasks -> q_probe_q [label="probe"];',
        'q_probe_q -> x_tasks_dlx [label="dead letters", style=dashed];',
        'x_tasks_dlx -> q_tasks_dlq [label=""];',
        'q_own_q -> x_own_dlx [label="dead letters", style=dashed];',
        'x_own_dlx -> q_own_dlq [label=""];',
    } <= set(lines)


# -- check ---------------------------------------------------------------------------------


def test_check_exits_0_when_the_plugins_are_valid(run_cli: RunCli) -> None:
    result = run_cli("check", "--json", queues=TWO_QUEUES)

    assert cli_json(result) == {"plugins_ok": True, "queues": 2, "exchanges": 3}


def test_check_exits_3_naming_a_plugin_that_fails_to_import(run_cli: RunCli) -> None:
    result = run_cli("check", RABBITWORKER_PLUGINS="probe_plugin,rw_broken_import_plugin")

    assert result.returncode == 3
    assert "rw_broken_import_plugin" in result.stderr
    assert "a_dependency_nobody_installed" in result.stderr


def test_check_broker_exits_4_when_the_broker_is_unreachable(run_cli: RunCli) -> None:
    result = run_cli("check", "--broker")

    assert result.returncode == 4
    assert "cannot connect to amqp://guest:****@127.0.0.1:" in result.stderr


@pytest.mark.broker
def test_check_broker_exits_5_and_reports_everything_missing_on_a_fresh_vhost(
    run_cli: RunCli, broker: Broker
) -> None:
    result = run_cli("check", "--broker", "--json", queues=[PROBE_Q], amqp_url=broker.amqp_url)

    assert result.returncode == 5, result.stderr
    report = json.loads(result.stdout)
    assert report["broker_ok"] is False
    assert {(e["kind"], e["name"], e["status"]) for e in report["broker"]} == {
        ("exchange", "tasks", "missing"),
        ("exchange", "tasks.dlx", "missing"),
        ("queue", "probe.q", "missing"),
        ("queue", DLQ, "missing"),
    }


@pytest.mark.broker
async def test_check_broker_exits_0_once_a_host_declared_the_topology_and_reports_depths(
    run_cli: RunCli,
    start_host: Callable[..., HostProcess],
    amqp: AmqpClient,
    broker: Broker,
) -> None:
    start_host([PROBE_Q, OTHER_Q])
    for message_id in ("f-1", "f-2"):
        await send(amqp, "probe", message_id, "fail")
    await wait_ready(amqp, DLQ, 2)

    result = await asyncio.to_thread(
        run_cli, "check", "--broker", "--json", queues=[PROBE_Q, OTHER_Q], amqp_url=broker.amqp_url
    )

    report = cli_json(result)
    assert report["broker_ok"] is True
    queues = {e["name"]: e for e in report["broker"] if e["kind"] == "queue"}
    assert {name: (e["status"], e["messages"], e["consumers"]) for name, e in queues.items()} == {
        "probe.q": ("ok", 0, 1),
        "other.q": ("ok", 0, 1),
        DLQ: ("ok", 2, 0),
    }
    assert {e["role"] for e in queues.values()} == {"work", "dlq"}


@pytest.mark.broker
async def test_check_broker_table_shows_depths_and_consumers_of_each_queue(
    run_cli: RunCli, start_host: Callable[..., HostProcess], amqp: AmqpClient, broker: Broker
) -> None:
    start_host([PROBE_Q])
    await send(amqp, "probe", "f-1", "fail")
    await wait_ready(amqp, DLQ, 1)

    result = await asyncio.to_thread(
        run_cli, "check", "--broker", queues=[PROBE_Q], amqp_url=broker.amqp_url
    )

    assert result.returncode == 0, result.stderr
    assert table_cells(result.stdout, "probe.q")[:6] == ["queue", "probe.q", "work", "ok", "0", "1"]
    assert table_cells(result.stdout, DLQ)[:6] == ["queue", DLQ, "dlq", "ok", "1", "0"]


@pytest.mark.broker
async def test_check_broker_reports_a_queue_declared_with_other_arguments_as_differs_naming_it(
    run_cli: RunCli, amqp: AmqpClient, broker: Broker
) -> None:
    await declare_like_the_host(broker.amqp_url, [{**PROBE_Q, "dlx_exchange_name": "elsewhere"}])

    result = await asyncio.to_thread(
        run_cli, "check", "--broker", "--json", queues=[PROBE_Q], amqp_url=broker.amqp_url
    )

    assert result.returncode == 5, result.stderr
    probe = next(e for e in json.loads(result.stdout)["broker"] if e["name"] == "probe.q")
    assert probe["status"] == "differs"
    assert "x-dead-letter-exchange" in probe["detail"]
    assert "tasks.dlx" in probe["detail"]


# -- publish -------------------------------------------------------------------------------


@pytest.mark.broker
async def test_publish_with_payload_puts_the_confirmed_message_in_the_queue(
    run_cli: RunCli, amqp: AmqpClient, broker: Broker
) -> None:
    await declare_like_the_host(broker.amqp_url, [PROBE_Q])

    result = await asyncio.to_thread(
        run_cli,
        "publish",
        "work",
        "--routing-key",
        "probe",
        "--payload",
        '{"id": "cli-1", "sleep": 0}',
        amqp_url=broker.amqp_url,
    )

    assert result.returncode == 0, result.stderr
    [message] = await amqp.take_all("probe.q")
    assert message.message_id == result.stdout.strip()
    assert json.loads(message.body) == {"task": "work", "payload": {"id": "cli-1", "sleep": 0}}
    assert message.delivery_mode == 2


@pytest.mark.broker
async def test_publish_with_payload_file_sends_the_files_json(
    run_cli: RunCli, amqp: AmqpClient, broker: Broker, tmp_path: Path
) -> None:
    await declare_like_the_host(broker.amqp_url, [PROBE_Q])
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"id": "from-file", "items": [1, 2, 3]}))

    result = await asyncio.to_thread(
        run_cli,
        "publish",
        "work",
        "--routing-key",
        "probe",
        "--payload-file",
        str(payload),
        "--json",
        amqp_url=broker.amqp_url,
    )

    sent = cli_json(result)
    [message] = await amqp.take_all("probe.q")
    assert message.message_id == sent["message_id"]
    assert json.loads(message.body) == {
        "task": "work",
        "payload": {"id": "from-file", "items": [1, 2, 3]},
    }


@pytest.mark.broker
async def test_publish_to_an_unbound_routing_key_exits_1_saying_it_was_not_routed(
    run_cli: RunCli, amqp: AmqpClient, broker: Broker
) -> None:
    await declare_like_the_host(broker.amqp_url, [PROBE_Q])

    result = await asyncio.to_thread(
        run_cli, "publish", "work", "--routing-key", "nobody", amqp_url=broker.amqp_url
    )

    assert result.returncode == 1
    assert "no queue is bound to exchange 'tasks' with routing key 'nobody'" in result.stderr
    assert result.stdout == ""
    assert await amqp.ready("probe.q") == 0


@pytest.mark.broker
async def test_publish_of_a_payload_that_fails_the_typed_handlers_model_exits_3_and_sends_nothing(
    run_cli: RunCli, amqp: AmqpClient, broker: Broker
) -> None:
    await declare_like_the_host(broker.amqp_url, [{"name": "typed.queue", "routing_key": "typed"}])

    result = await asyncio.to_thread(
        run_cli,
        "publish",
        "greet",
        "--routing-key",
        "typed",
        "--payload",
        '{"name": "", "times": "twice"}',
        amqp_url=broker.amqp_url,
        RABBITWORKER_PLUGINS="typed_plugin",
    )

    assert result.returncode == 3
    assert "payload does not match Greeting of task 'greet'" in result.stderr
    assert "name" in result.stderr
    assert "times" in result.stderr
    assert await amqp.ready("typed.queue") == 0


@pytest.mark.broker
async def test_publish_of_a_payload_that_fits_the_typed_handlers_model_is_sent(
    run_cli: RunCli, amqp: AmqpClient, broker: Broker
) -> None:
    await declare_like_the_host(broker.amqp_url, [{"name": "typed.queue", "routing_key": "typed"}])

    result = await asyncio.to_thread(
        run_cli,
        "publish",
        "greet",
        "--routing-key",
        "typed",
        "--payload",
        '{"name": "ada", "times": 2}',
        amqp_url=broker.amqp_url,
        RABBITWORKER_PLUGINS="typed_plugin",
    )

    assert result.returncode == 0, result.stderr
    assert await amqp.ready("typed.queue") == 1
