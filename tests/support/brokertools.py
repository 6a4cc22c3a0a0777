"""Helpers for tests that talk to the real broker or run a real host process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

SUPPORT = Path(__file__).parent
BROKER_HOST = os.environ.get("RABBITWORKER_TEST_BROKER_HOST", "127.0.0.1")
API = f"http://{BROKER_HOST}:15672/api"
AUTH = ("guest", "guest")


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def management_up() -> bool:
    try:
        return httpx.get(f"{API}/overview", auth=AUTH, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Broker:
    """One test's vhost on the real broker, with a few management-API helpers."""

    vhost: str
    api: str

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{BROKER_HOST}:5672/{quote(self.vhost, safe='')}"

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.api}/{path}", auth=AUTH, timeout=10)
        response.raise_for_status()
        return response.json()

    def _vpath(self, kind: str, name: str = "") -> str:
        base = f"{kind}/{quote(self.vhost, safe='')}"
        return f"{base}/{quote(name, safe='')}" if name else base

    def queue(self, name: str) -> dict[str, Any]:
        return self.get(self._vpath("queues", name))  # type: ignore[no-any-return]

    def queues(self) -> dict[str, dict[str, Any]]:
        return {q["name"]: q for q in self.get(self._vpath("queues"))}

    def exchanges(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.get(self._vpath("exchanges"))}

    def bindings(self) -> list[dict[str, Any]]:
        return self.get(self._vpath("bindings"))  # type: ignore[no-any-return]

    def get_messages(self, queue: str, count: int = 100) -> list[dict[str, Any]]:
        """Take up to ``count`` messages off ``queue`` (acked: they leave the queue)."""
        response = httpx.post(
            f"{self.api}/{self._vpath('queues', queue)}/get",
            auth=AUTH,
            timeout=10,
            json={"count": count, "ackmode": "ack_requeue_false", "encoding": "auto"},
        )
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def depth(self, queue: str) -> int:
        """Messages in ``queue`` (ready + unacked), as the broker's stats report them."""
        info = self.queue(queue)
        return int(info.get("messages", 0) or 0)

    def publish_raw(
        self,
        routing_key: str,
        body: str,
        exchange: str = "tasks",
        properties: dict[str, Any] | None = None,
    ) -> bool:
        """Publish any body, valid or not, the way another AMQP client would."""
        response = httpx.post(
            f"{self.api}/exchanges/{quote(self.vhost, safe='')}/{quote(exchange, safe='')}/publish",
            auth=AUTH,
            timeout=10,
            json={
                "properties": properties or {},
                "routing_key": routing_key,
                "payload": body,
                "payload_encoding": "string",
            },
        )
        response.raise_for_status()
        return bool(response.json()["routed"])


@dataclass
class HostProcess:
    """A ``rabbitworker-host`` subprocess and the files it writes."""

    process: subprocess.Popen[bytes]
    log_path: Path
    events_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line]

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        def seen() -> bool:
            if self.process.poll() is not None and text not in self.log:
                raise AssertionError(
                    f"host exited with {self.process.returncode} before logging {text!r}:\n"
                    f"{self.log}"
                )
            return text in self.log

        wait_for(seen, timeout=timeout, message=f"{text!r} in the host log")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def host_env(amqp_url: str, **extra: str) -> dict[str, str]:
    """The environment of a host process for the probe plugin (no autoloaded plugins)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITWORKER_")}
    env.update(
        {
            "RABBITWORKER_AMQP_URL": amqp_url,
            "RABBITWORKER_PLUGINS": "probe_plugin",
            "RABBITWORKER_DISABLE_PLUGIN_AUTOLOAD": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SUPPORT), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env
