"""Shared fixtures: a real RabbitMQ, one throwaway vhost per test, and a real host process.

Every broker test gets its own vhost (created and deleted here), so tests never depend on
queues being empty and can run beside other runs on the same broker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from brokertools import (
    API,
    AUTH,
    AmqpClient,
    Broker,
    HostProcess,
    closed_port,
    create_vhost,
    delete_vhost,
    host_env,
    management_up,
    wait_for,
)


@pytest.fixture(scope="session", autouse=True)
def _plugin_data_in_a_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The bundled plugins write under $XDG_DATA_HOME: keep that out of the user's home
    (host processes the tests start inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
        yield


@pytest.fixture(scope="session")
def management_api() -> str:
    """The RabbitMQ management HTTP API, enabled if it is not yet."""
    if not management_up():
        subprocess.run(
            ["rabbitmq-plugins", "enable", "rabbitmq_management"], check=True, capture_output=True
        )
        wait_for(management_up, timeout=60, interval=0.5, message="the management API")
    return API


@pytest.fixture
def broker(management_api: str) -> Iterator[Broker]:
    """A fresh vhost for this test, deleted afterwards."""
    vhost = create_vhost(management_api)
    broker = Broker(vhost, management_api)
    yield broker
    delete_vhost(vhost, management_api)
    for user in broker.users:
        httpx.delete(f"{management_api}/users/{quote(user, safe='')}", auth=AUTH, timeout=10)


@pytest.fixture
async def amqp(broker: Broker) -> AsyncIterator[AmqpClient]:
    """An independent AMQP client on this test's vhost (exact counts, raw publishing)."""
    async with AmqpClient(broker.amqp_url) as client:
        yield client


@pytest.fixture
def amqp_url(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's vhost URL, also set as RABBITWORKER_AMQP_URL for publish_task."""
    monkeypatch.setenv("RABBITWORKER_AMQP_URL", broker.amqp_url)
    return broker.amqp_url


@pytest.fixture
def start_host(amqp_url: str, tmp_path: Path) -> Iterator[Callable[..., HostProcess]]:
    """Start ``rabbitworker-host`` with the probe plugin serving ``queues``.

    ``queues`` is a list of QueueConfig keyword dicts; handlers are always the probe's.
    Returns once the host logs that it is consuming (unless ``wait=False``).
    ``command`` replaces ``python -m rabbitworker`` (e.g. the console script); ``args``
    follow it; ``env`` adds or overrides environment variables.
    """
    started: list[HostProcess] = []

    def start(
        queues: list[dict[str, Any]] | None = None,
        *,
        wait: bool = True,
        args: tuple[str, ...] = (),
        command: Sequence[str] = (sys.executable, "-m", "rabbitworker"),
        **env: str,
    ) -> HostProcess:
        index = len(started)
        config = tmp_path / f"probe-{index}.json"
        config.write_text(
            json.dumps(
                queues if queues is not None else [{"name": "probe.q", "routing_key": "probe"}]
            )
        )
        events = tmp_path / "events.jsonl"
        log_path = tmp_path / f"host-{index}.log"
        full_env = host_env(amqp_url, PROBE_CONFIG=str(config), PROBE_EVENTS=str(events), **env)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*command, *args],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        host = HostProcess(process, log_path, events)
        started.append(host)
        if wait:
            host.wait_for_log("consuming from")
        return host

    yield start
    for host in started:
        if host.process.poll() is None:
            host.process.kill()
            host.process.wait(timeout=10)


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``rabbitworker-host`` to completion (at most ``timeout`` s) with the probe's
    environment and ``queues`` (QueueConfig keyword dicts), capturing stdout and stderr
    apart. The broker URL defaults to a port nothing listens on: pass ``amqp_url``."""

    def run(
        *args: str,
        queues: list[dict[str, Any]] | None = None,
        amqp_url: str | None = None,
        timeout: float = 20.0,
        command: Sequence[str] = (sys.executable, "-m", "rabbitworker"),
        **env: str,
    ) -> subprocess.CompletedProcess[str]:
        config = tmp_path / f"probe-cli-{uuid.uuid4().hex[:8]}.json"
        config.write_text(
            json.dumps(
                queues if queues is not None else [{"name": "probe.q", "routing_key": "probe"}]
            )
        )
        url = amqp_url or f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
        return subprocess.run(
            [*command, *args],
            env=host_env(
                url, PROBE_CONFIG=str(config), PROBE_EVENTS=str(tmp_path / "events.jsonl"), **env
            ),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
