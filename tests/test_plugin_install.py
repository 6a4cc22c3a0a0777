"""Plugins are added by ``pip install`` and removed by ``pip uninstall``: nothing else.

Each test builds tiny plugin distributions (hatchling, a ``rabbitworker.queues`` entry point)
and installs them with pip into a fresh virtual environment. That environment reaches this
one's packages through a ``.pth`` file, so nothing is downloaded; plugins installed out
here are disabled in it, so only the test's own plugins are seen.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from brokertools import AmqpClient, HostProcess, closed_port, host_env
from venvs import venv_with_outer_packages

import rabbitworker

HOST_SOURCE = Path(rabbitworker.__file__).resolve().parents[1]

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{distribution}"
version = "{version}"
requires-python = ">=3.11"
dependencies = ["rabbitworker-host"]

[project.entry-points."rabbitworker.queues"]
{entry_point} = "{module}"

[tool.hatch.build.targets.wheel]
packages = ["src/{module}"]
"""

#: A plugin module as the contract asks: it defines the one hook and nothing else.
PLUGIN_MODULE = """\
from rabbitworker import QueueConfig, hookimpl


async def greet(message):
    return "hello " + message["payload"]["name"]


@hookimpl
def rabbitworker_queues():
    return [QueueConfig({queue!r}, {routing_key!r}, {{"greet": greet}}, prefetch_count=3)]
"""


@dataclass
class PluginEnv:
    """A virtual environment to pip-install plugin distributions into."""

    root: Path
    python: Path

    def build(
        self,
        distribution: str,
        *,
        entry_point: str,
        queue: str,
        routing_key: str = "rk",
        version: str = "1.0.0",
        source: str | None = None,
    ) -> Path:
        """Write a plugin distribution's source tree; return its directory."""
        module = distribution.replace("-", "_")
        project = self.root / "src-trees" / distribution
        package = project / "src" / module
        package.mkdir(parents=True)
        (project / "pyproject.toml").write_text(
            PYPROJECT.format(
                distribution=distribution, version=version, entry_point=entry_point, module=module
            )
        )
        (package / "__init__.py").write_text(
            source
            if source is not None
            else PLUGIN_MODULE.format(queue=queue, routing_key=routing_key)
        )
        return project

    def pip(self, *args: str) -> None:
        result = subprocess.run(
            [str(self.python), "-m", "pip", "--disable-pip-version-check", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def install(self, *projects: Path) -> None:
        self.pip("install", "--no-index", "--no-deps", "--no-build-isolation", *map(str, projects))

    def uninstall(self, *distributions: str) -> None:
        self.pip("uninstall", "-y", *distributions)

    def env(self, amqp_url: str | None = None, **extra: str) -> dict[str, str]:
        """The host's environment in this venv: entry points autoloaded, except those of
        plugins installed outside it."""
        outside = sorted({ep.name for ep in entry_points(group="rabbitworker.queues")})
        return host_env(
            amqp_url or f"amqp://guest:guest@127.0.0.1:{closed_port()}/",
            RABBITWORKER_PLUGINS="",
            RABBITWORKER_DISABLE_PLUGIN_AUTOLOAD="0",
            RABBITWORKER_DISABLED_PLUGINS=",".join(outside),
            **extra,
        )

    def rabbitworker(
        self, *args: str, amqp_url: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), "-m", "rabbitworker", *args],
            env=self.env(amqp_url),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def listed(self) -> list[dict[str, Any]]:
        result = self.rabbitworker("queues", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def plugin_env(tmp_path: Path) -> PluginEnv:
    # The host's source too, so the host imports even where it is not installed editable.
    return PluginEnv(tmp_path, venv_with_outer_packages(tmp_path, HOST_SOURCE))


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
