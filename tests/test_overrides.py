"""Per-deployment overrides: RABBITWORKER_QUEUES (JSON) and the TOML settings file change a
plugin's queues without editing it, ``queues`` says where each value came from, and
RABBITWORKER_ENABLED_PLUGINS / RABBITWORKER_DISABLED_PLUGINS choose the plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from brokertools import AmqpClient, HostProcess, host_env, max_overlap
from opstools import OTHER_Q, PROBE_Q, cli_json, declare_like_the_host

RunCli = Callable[..., subprocess.CompletedProcess[str]]

ENV = "env RABBITWORKER_QUEUES"
AUTOLOAD = {"RABBITWORKER_DISABLE_PLUGIN_AUTOLOAD": "0", "RABBITWORKER_PLUGINS": ""}


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {row["queue"]: row for row in cli_json(result)}


def test_rabbitworker_queues_changes_prefetch_retries_and_timeout_of_one_queue(
    run_cli: RunCli,
) -> None:
    result = run_cli(
        "queues",
        "--json",
        queues=[PROBE_Q, OTHER_Q],
        RABBITWORKER_QUEUES=json.dumps(
            {"probe.q": {"prefetch_count": 5, "max_retries": 2, "handler_timeout": 9.5}}
        ),
    )

    probe, other = rows(result)["probe.q"], rows(result)["other.q"]
    assert (probe["prefetch_count"], probe["max_retries"], probe["handler_timeout"]) == (5, 2, 9.5)
    assert probe["overrides"] == {"prefetch_count": ENV, "max_retries": ENV, "handler_timeout": ENV}
    assert (other["prefetch_count"], other["max_retries"], other["handler_timeout"]) == (1, 0, 1500)
    assert other["overrides"] == {}


def test_the_toml_file_changes_prefetch_retries_and_timeout_and_is_named_as_their_source(
    run_cli: RunCli, tmp_path: Path
) -> None:
    config = tmp_path / "deploy.toml"
    config.write_text(
        '[queues."probe.q"]\nprefetch_count = 7\nmax_retries = 3\nhandler_timeout = 20\n'
    )

    result = run_cli("queues", "--json", queues=[PROBE_Q], RABBITWORKER_CONFIG_FILE=str(config))

    probe = rows(result)["probe.q"]
    assert (probe["prefetch_count"], probe["max_retries"], probe["handler_timeout"]) == (7, 3, 20)
    assert probe["overrides"] == dict.fromkeys(
        ("prefetch_count", "max_retries", "handler_timeout"), f"file {config}"
    )


def test_rabbitworker_toml_in_the_working_directory_is_read_without_naming_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "probe.json").write_text(json.dumps([PROBE_Q]))
    (tmp_path / "rabbitworker.toml").write_text('[queues."probe.q"]\nprefetch_count = 6\n')

    result = subprocess.run(
        [sys.executable, "-m", "rabbitworker", "queues", "--json"],
        cwd=tmp_path,
        env=host_env(
            "amqp://guest:guest@127.0.0.1:1/",
            PROBE_CONFIG=str(tmp_path / "probe.json"),
            PROBE_EVENTS=str(tmp_path / "events.jsonl"),
        ),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )

    probe = rows(result)["probe.q"]
    assert probe["prefetch_count"] == 6
    assert probe["overrides"] == {"prefetch_count": "file rabbitworker.toml"}


def test_the_environment_wins_over_the_toml_file_field_by_field(
    run_cli: RunCli, tmp_path: Path
) -> None:
    config = tmp_path / "deploy.toml"
    config.write_text('[queues."probe.q"]\nprefetch_count = 7\nmax_retries = 3\n')

    result = run_cli(
        "queues",
        "--json",
        queues=[PROBE_Q],
        RABBITWORKER_CONFIG_FILE=str(config),
        RABBITWORKER_QUEUES=json.dumps({"probe.q": {"prefetch_count": 2}}),
    )

    probe = rows(result)["probe.q"]
    assert (probe["prefetch_count"], probe["max_retries"]) == (2, 3)
    assert probe["overrides"] == {"prefetch_count": ENV, "max_retries": f"file {config}"}


def test_the_queues_table_shows_each_overridden_value_with_its_source(run_cli: RunCli) -> None:
    result = run_cli(
        "queues",
        queues=[PROBE_Q, OTHER_Q],
        RABBITWORKER_QUEUES=json.dumps({"probe.q": {"prefetch_count": 3, "handler_timeout": 12}}),
    )

    assert result.returncode == 0, result.stderr
    probe = next(line for line in result.stdout.splitlines() if "probe.q" in line)
    other = next(line for line in result.stdout.splitlines() if "other.q" in line)
    assert f"3 ({ENV})" in probe
    assert f"12s ({ENV})" in probe
    assert "RABBITWORKER_QUEUES" not in other


@pytest.mark.broker
async def test_the_host_handles_as_many_messages_at_once_as_the_overridden_prefetch(
    amqp_url: str, start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    # All waiting before the host consumes: published one by one under a running host, the
    # first could be done before the third arrived on a slow machine.
    await declare_like_the_host(amqp_url, [PROBE_Q])
    await amqp.publish_work("probe", range(9), sleep=0.2)
    host = start_host([PROBE_Q], RABBITWORKER_QUEUES=json.dumps({"probe.q": {"prefetch_count": 3}}))

    await host.wait_for_events("end", 9)
    assert max_overlap(host.events()) == 3
    assert "[probe.q] consuming: routing key 'probe' on exchange 'tasks', prefetch 3" in host.log


def test_an_override_of_an_unknown_queue_exits_3_naming_it(run_cli: RunCli) -> None:
    result = run_cli(
        "queues",
        queues=[PROBE_Q],
        RABBITWORKER_QUEUES=json.dumps({"missing.q": {"prefetch_count": 2}}),
    )

    assert result.returncode == 3
    assert "name missing.q, which no loaded plugin declares" in result.stderr
    assert "Known queues: probe.q" in result.stderr


def test_the_host_refuses_to_start_with_an_override_of_an_unknown_queue(run_cli: RunCli) -> None:
    result = run_cli(
        "run",
        queues=[PROBE_Q],
        RABBITWORKER_QUEUES=json.dumps({"missing.q": {"prefetch_count": 2}}),
    )

    assert result.returncode == 3
    assert "missing.q" in result.stderr


def test_an_override_that_makes_a_queue_invalid_exits_3_naming_the_field_and_its_source(
    run_cli: RunCli,
) -> None:
    result = run_cli(
        "check",
        queues=[PROBE_Q],
        RABBITWORKER_QUEUES=json.dumps({"probe.q": {"prefetch_count": 0}}),
    )

    assert result.returncode == 3
    assert f"the override of prefetch_count ({ENV}) makes queue 'probe.q' invalid" in result.stderr


def test_enabled_plugins_loads_only_the_named_installed_plugins(run_cli: RunCli) -> None:
    result = run_cli("queues", "--json", RABBITWORKER_ENABLED_PLUGINS="reports", **AUTOLOAD)

    assert list(rows(result)) == ["reports.queue"]


def test_disabled_plugins_skips_the_named_installed_plugins(run_cli: RunCli) -> None:
    result = run_cli(
        "plugins", "--json", RABBITWORKER_DISABLED_PLUGINS="notifications,analytics", **AUTOLOAD
    )

    assert [row["name"] for row in cli_json(result)] == [
        "rabbitworker.messagelog",
        "rabbitworker.tracing",
        "reports",
    ]
    assert "plugin 'notifications'" in result.stderr
    assert "disabled by RABBITWORKER_DISABLED_PLUGINS" in result.stderr
