"""The ``rabbitworker-host`` command: running the host, listing queues, help, exit codes."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import distribution

import pytest
from brokertools import HOST_SCRIPT, AmqpClient, HostProcess, closed_port

RunCli = Callable[..., subprocess.CompletedProcess[str]]

QUEUES = [
    {"name": "probe.q", "routing_key": "probe"},
    {
        "name": "own.q",
        "routing_key": "own.key",
        "prefetch_count": 4,
        "exchange_name": "work",
        "dlx_exchange_name": "own.dlx",
        "dlq_name": "own.dlq",
    },
]


# -- queues: no broker needed --------------------------------------------------------------


def test_queues_json_needs_no_broker_and_prints_only_json_on_stdout(run_cli: RunCli) -> None:
    result = run_cli("queues", "--json", queues=QUEUES)

    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["queue"] for row in rows] == ["probe.q", "own.q"]


def test_queues_json_describes_each_queue_and_its_plugin(run_cli: RunCli) -> None:
    result = run_cli("queues", "--json", queues=QUEUES)

    own = {row["queue"]: row for row in json.loads(result.stdout)}["own.q"]
    assert own["routing_key"] == "own.key"
    assert own["exchange"] == "work"
    assert own["prefetch_count"] == 4
    assert own["dlx"] == "own.dlx"
    assert own["dlq"] == "own.dlq"
    assert own["tasks"] == ["fail", "work", "work_sync"]
    assert own["plugin"]["name"] == "probe_plugin"


def test_queues_json_sends_log_lines_to_stderr(run_cli: RunCli) -> None:
    result = run_cli("queues", "--json", queues=QUEUES)

    assert "probe plugin contributes 2 queue(s)" in result.stderr
    assert "probe plugin" not in result.stdout


def test_queues_table_needs_no_broker_and_shows_every_queue(run_cli: RunCli) -> None:
    result = run_cli("queues", queues=QUEUES)

    assert result.returncode == 0, result.stderr
    for text in ("probe.q", "own.q", "own.key", "work", "own.dlx", "own.dlq", "probe_plugin"):
        assert text in result.stdout


def test_queues_through_the_console_script(run_cli: RunCli) -> None:
    result = run_cli("queues", "--json", queues=QUEUES, command=(HOST_SCRIPT,))

    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 2


# -- run -----------------------------------------------------------------------------------


def test_the_rabbitworker_host_distribution_installs_the_rabbitworker_host_script() -> None:
    scripts = {
        ep.name: ep.value
        for ep in distribution("rabbitworker-host").entry_points
        if ep.group == "console_scripts"
    }

    assert scripts["rabbitworker-host"].startswith("rabbitworker.")


@pytest.mark.broker
@pytest.mark.parametrize(
    ("command", "args"),
    [
        pytest.param((HOST_SCRIPT,), (), id="rabbitworker-host"),
        pytest.param((HOST_SCRIPT,), ("run",), id="rabbitworker-host-run"),
    ],
)
async def test_the_console_script_runs_the_host_with_or_without_run(
    start_host: Callable[..., HostProcess],
    amqp: AmqpClient,
    command: tuple[str, ...],
    args: tuple[str, ...],
) -> None:
    host = start_host(command=command, args=args)

    await amqp.publish_work("probe", [1])

    await host.async_wait_for_log("ACKed message m-1")
    assert await host.async_stop() == 0


@pytest.mark.parametrize("args", [("--help",), ("run", "--help"), ("queues", "--help")])
def test_help_exits_zero(run_cli: RunCli, args: tuple[str, ...]) -> None:
    result = run_cli(*args, command=(HOST_SCRIPT,))

    assert result.returncode == 0
    assert "Usage:" in result.stdout


def test_help_lists_the_commands(run_cli: RunCli) -> None:
    result = run_cli("--help", command=(HOST_SCRIPT,))

    assert "run" in result.stdout
    assert "queues" in result.stdout


def test_run_with_the_broker_unreachable_exits_non_zero_naming_the_masked_url(
    run_cli: RunCli,
) -> None:
    port = closed_port()
    url = f"amqp://worker:Unreachable-Pa55word@127.0.0.1:{port}/jobs"

    started = time.monotonic()
    result = run_cli("run", amqp_url=url)

    assert result.returncode != 0
    assert time.monotonic() - started < 10
    assert f"amqp://worker:****@127.0.0.1:{port}/jobs" in result.stderr
    assert "Unreachable-Pa55word" not in result.stdout + result.stderr
