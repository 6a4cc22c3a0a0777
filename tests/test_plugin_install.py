"""Plugins are added by ``pip install`` and removed by ``pip uninstall``: nothing else.

Each test builds tiny plugin distributions (hatchling, a ``rabbitworker.queues`` entry point)
and installs them with pip into a fresh virtual environment. That environment reaches this
one's packages through a ``.pth`` file, so nothing is downloaded; plugins installed out
here are disabled in it, so only the test's own plugins are seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from brokertools import AmqpClient, HostProcess
from venvs import PluginEnv


@pytest.fixture
def plugin_env(tmp_path: Path) -> PluginEnv:
    return PluginEnv.create(tmp_path)


def queues_by_name(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["queue"]: row for row in rows}


def test_an_installed_plugin_is_listed_with_its_distribution(plugin_env: PluginEnv) -> None:
    plugin_env.install(
        plugin_env.build(
            "rwtest-greetings", entry_point="greetings", queue="greetings.q", version="1.2.3"
        )
    )

    row = queues_by_name(plugin_env.listed())["greetings.q"]
    assert row["routing_key"] == "rk"
    assert row["prefetch_count"] == 3
    assert row["tasks"] == ["greet"]
    assert row["plugin"] == {
        "name": "greetings",
        "distribution": "rwtest-greetings",
        "version": "1.2.3",
    }


def test_an_uninstalled_plugin_is_no_longer_listed(plugin_env: PluginEnv) -> None:
    plugin_env.install(
        plugin_env.build("rwtest-greetings", entry_point="greetings", queue="greetings.q")
    )
    assert "greetings.q" in queues_by_name(plugin_env.listed())

    plugin_env.uninstall("rwtest-greetings")

    assert "greetings.q" not in queues_by_name(plugin_env.listed())


def test_two_installed_plugins_claiming_one_queue_stop_the_host_naming_both(
    plugin_env: PluginEnv,
) -> None:
    plugin_env.install(
        plugin_env.build("rwtest-claim-a", entry_point="claim_a", queue="shared.q"),
        plugin_env.build("rwtest-claim-b", entry_point="claim_b", queue="shared.q"),
    )

    started = time.monotonic()
    result = plugin_env.rabbitworker("run")

    assert result.returncode != 0
    assert time.monotonic() - started < 10
    [line] = [line for line in result.stderr.splitlines() if "shared.q" in line]
    for name in ("claim_a", "rwtest-claim-a", "claim_b", "rwtest-claim-b"):
        assert name in line


def test_an_installed_plugin_that_fails_to_import_is_named_with_its_distribution(
    plugin_env: PluginEnv,
) -> None:
    plugin_env.install(
        plugin_env.build(
            "rwtest-broken",
            entry_point="broken",
            queue="unused",
            source="raise ImportError('needs libfoo, which is not installed')\n",
        )
    )

    result = plugin_env.rabbitworker("run")

    assert result.returncode != 0
    assert any(
        "'broken'" in line
        and "rwtest-broken" in line
        and "needs libfoo, which is not installed" in line
        for line in result.stderr.splitlines()
    ), result.stderr
    assert "Traceback" not in result.stderr


async def test_the_host_consumes_the_queue_of_an_installed_plugin(
    plugin_env: PluginEnv,
    start_host: Callable[..., HostProcess],
    amqp_url: str,
    amqp: AmqpClient,
) -> None:
    plugin_env.install(
        plugin_env.build("rwtest-greetings", entry_point="greetings", queue="greetings.q")
    )
    env = plugin_env.env(amqp_url)
    host = start_host(
        [],
        command=(str(plugin_env.python), "-m", "rabbitworker"),
        **{k: v for k, v in env.items() if k.startswith("RABBITWORKER_")},
    )

    await amqp.publish({"task": "greet", "payload": {"name": "Ada"}}, "rk", message_id="hi")

    await host.async_wait_for_log("ACKed message hi")
    assert host.log_lines("[greetings.q] ACKed message hi")
    assert await host.async_stop() == 0
