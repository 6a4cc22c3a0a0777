"""A faulty plugin stops the host within seconds, with a message naming it and the cause.

The plugins are modules under tests/support, loaded with RABBITWORKER_PLUGINS next to the
healthy probe plugin; the broker is up, so the only thing wrong is the plugin. (Plugins
installed through their entry point and distribution: test_plugin_install.py.)
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest
from brokertools import Broker

pytestmark = pytest.mark.broker

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def run_host_with(run_cli: RunCli, broker: Broker, *plugins: str) -> tuple[int, str, float]:
    """Run the host with the probe plugin and ``plugins``: (exit code, output, seconds)."""
    started = time.monotonic()
    result = run_cli(
        "run",
        amqp_url=broker.amqp_url,
        timeout=30,
        RABBITWORKER_PLUGINS=",".join(["probe_plugin", *plugins]),
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "| ERROR" in line]


@pytest.mark.parametrize(
    ("plugin", "cause"),
    [
        pytest.param(
            "rw_broken_import_plugin",
            "No module named 'a_dependency_nobody_installed'",
            id="fails-to-import",
        ),
        pytest.param(
            "rw_raising_hook_plugin",
            "settings file /etc/raising-plugin.toml is missing",
            id="queues-hook-raises",
        ),
        pytest.param(
            "rw_raising_startup_plugin",
            "the plugin's database at db.invalid:5432 refused",
            id="startup-hook-raises",
        ),
        pytest.param("rw_invalid_config_plugin", "prefetch_count", id="invalid-queueconfig"),
    ],
)
def test_a_faulty_plugin_stops_the_host_naming_the_plugin_and_the_cause(
    run_cli: RunCli, broker: Broker, plugin: str, cause: str
) -> None:
    code, output, seconds = run_host_with(run_cli, broker, plugin)

    assert code != 0
    assert seconds < 10
    assert any(plugin in line and cause in line for line in error_lines(output)), output
    assert "Traceback" not in output, "one clear line, not a bare traceback"


def test_two_plugins_claiming_one_queue_stop_the_host_naming_both(
    run_cli: RunCli, broker: Broker
) -> None:
    code, output, seconds = run_host_with(
        run_cli, broker, "rw_claims_a_plugin", "rw_claims_b_plugin"
    )

    assert code != 0
    assert seconds < 10
    [line] = [line for line in error_lines(output) if "claimed.q" in line]
    assert "rw_claims_a_plugin" in line
    assert "rw_claims_b_plugin" in line


def test_a_faulty_plugin_consumes_nothing(run_cli: RunCli, broker: Broker) -> None:
    run_host_with(run_cli, broker, "rw_raising_hook_plugin")

    assert "probe.q" not in broker.queues(), "nothing is declared when a plugin is broken"


def test_queues_command_reports_a_faulty_plugin_too(run_cli: RunCli) -> None:
    result = run_cli("queues", RABBITWORKER_PLUGINS="probe_plugin,rw_broken_import_plugin")

    assert result.returncode != 0
    assert result.stdout == ""
    assert any(
        "rw_broken_import_plugin" in line and "a_dependency_nobody_installed" in line
        for line in error_lines(result.stderr)
    ), result.stderr


def test_a_hook_may_return_any_iterable(run_cli: RunCli) -> None:
    result = run_cli("queues", "--json", RABBITWORKER_PLUGINS="rw_generator_plugin")

    assert result.returncode == 0, result.stderr
    assert "generated.one" in result.stdout
    assert "generated.two" in result.stdout
