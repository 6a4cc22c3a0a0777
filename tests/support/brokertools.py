"""Helpers for tests that talk to the real broker or run a real host process."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
import httpx
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

SUPPORT = Path(__file__).parent
BROKER_HOST = os.environ.get("RABBITWORKER_TEST_BROKER_HOST", "127.0.0.1")
API = f"http://{BROKER_HOST}:15672/api"
AUTH = ("guest", "guest")
#: The host's console script, installed next to this interpreter.
HOST_SCRIPT = str(Path(sys.executable).with_name("rabbitworker-host"))


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


async def async_wait_for(
    predicate: Callable[[], Any],
    within: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """:func:`wait_for` for async tests: ``predicate`` may return an awaitable, and the
    event loop keeps running between polls (``within`` seconds at most)."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {message}")
        await asyncio.sleep(interval)


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def max_overlap(events: Iterable[dict[str, Any]]) -> int:
    """The most handlers running at once, from start/end events in the order they happened.

    The probe appends events to one file as they happen, so file order is real order.
    """
    running = peak = 0
    for event in events:
        if event["event"] == "start":
            running += 1
            peak = max(peak, running)
        elif event["event"] == "end":
            running -= 1
    return peak


def management_up() -> bool:
    try:
        return httpx.get(f"{API}/overview", auth=AUTH, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def create_vhost(api: str = API) -> str:
    """A fresh test vhost on which guest has every right; returns its name."""
    vhost = f"rw-test-{uuid.uuid4().hex[:12]}"
    path = quote(vhost, safe="")
    httpx.put(f"{api}/vhosts/{path}", auth=AUTH, timeout=10).raise_for_status()
    httpx.put(
        f"{api}/permissions/{path}/guest",
        auth=AUTH,
        timeout=10,
        json={"configure": ".*", "write": ".*", "read": ".*"},
    ).raise_for_status()
    return vhost


def delete_vhost(vhost: str, api: str = API) -> None:
    httpx.delete(f"{api}/vhosts/{quote(vhost, safe='')}", auth=AUTH, timeout=30)


@dataclass
class Broker:
    """One test's vhost on the real broker, with a few management-API helpers."""

    vhost: str
    api: str
    users: list[str] = field(default_factory=list)

    @property
    def amqp_url(self) -> str:
        return self.url_for("guest", "guest")

    def url_for(self, user: str, password: str) -> str:
        """The AMQP URL of this vhost for ``user``."""
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"amqp://{credentials}@{BROKER_HOST}:5672/{quote(self.vhost, safe='')}"

    def create_user(self, user: str, password: str) -> str:
        """A broker user with full rights on this vhost only (deleted with the vhost);
        returns its AMQP URL."""
        response = httpx.put(
            f"{self.api}/users/{quote(user, safe='')}",
            auth=AUTH,
            timeout=10,
            json={"password": password, "tags": ""},
        )
        response.raise_for_status()
        self.users.append(user)
        response = httpx.put(
            f"{self.api}/{self._vpath('permissions', user)}",
            auth=AUTH,
            timeout=10,
            json={"configure": ".*", "write": ".*", "read": ".*"},
        )
        response.raise_for_status()
        return self.url_for(user, password)

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.api}/{path}", auth=AUTH, timeout=10)
        response.raise_for_status()
        return response.json()

    def _vpath(self, kind: str, name: str = "") -> str:
        base = f"{kind}/{quote(self.vhost, safe='')}"
        return f"{base}/{quote(name, safe='')}" if name else base

    def queue(self, name: str) -> dict[str, Any]:
        return self.get(self._vpath("queues", name))  # type: ignore[no-any-return]

    def exchange(self, name: str) -> dict[str, Any]:
        return self.get(self._vpath("exchanges", name))  # type: ignore[no-any-return]

    def queues(self) -> dict[str, dict[str, Any]]:
        return {q["name"]: q for q in self.get(self._vpath("queues"))}

    def exchanges(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.get(self._vpath("exchanges"))}

    def consumers(self) -> list[dict[str, Any]]:
        """This vhost's consumers (the management API lists them a few seconds late)."""
        return self.get(self._vpath("consumers"))  # type: ignore[no-any-return]

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


class AmqpClient:
    """An independent AMQP client on the test's vhost, for exact queue state and for
    publishing what ``publish_task`` would never send (raw bytes, odd JSON)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def __aenter__(self) -> AmqpClient:
        # Not connect_robust: a robust channel answers a passive declare from its cache,
        # with the message count of the first declare.
        self._connection = await aio_pika.connect(
            self.url, client_properties={"connection_name": "rabbitworker tests"}
        )
        self._channel = await self._connection.channel()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def channel(self) -> AbstractChannel:
        assert self._channel is not None, "use AmqpClient as an async context manager"
        return self._channel

    async def ready(self, queue: str) -> int:
        """Messages ready in ``queue`` right now (exact; excludes unacknowledged ones)."""
        declared = await self.channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)

    async def consumers(self, queue: str) -> int:
        """Consumers on ``queue`` right now (exact, unlike the management API)."""
        declared = await self.channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)

    async def take_all(self, queue: str) -> list[AbstractIncomingMessage]:
        """Remove every ready message from ``queue`` and return them, in queue order."""
        declared = await self.channel.declare_queue(queue, passive=True)
        taken = []
        while (message := await declared.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
        return taken

    async def publish(
        self,
        body: bytes | dict[str, Any] | list[Any],
        routing_key: str,
        *,
        exchange: str = "tasks",
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> None:
        """Publish ``body`` (bytes as they are; anything else as JSON), confirmed and routed."""
        if isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
            content_type = content_type or "application/json"
        target = await self.channel.get_exchange(exchange, ensure=False)
        result = await target.publish(
            aio_pika.Message(data, message_id=message_id, content_type=content_type),
            routing_key,
            mandatory=True,
        )
        # An unroutable mandatory message comes back as a Basic.Return before its confirm:
        # a test's set-up mistake, not something to carry on with.
        returned = isinstance(getattr(result, "delivery", None), aiormq.spec.Basic.Return)
        assert not returned, f"no queue is bound to {exchange!r} with {routing_key!r}"

    async def publish_work(
        self,
        routing_key: str,
        ids: Iterable[int],
        *,
        task: str = "work",
        sleep: float = 0,
        queue: str | None = None,
        gate: Path | None = None,
    ) -> None:
        """Publish one probe message per id: ``{"task": task, "payload": {...}}``; with
        ``gate``, the ``work`` handler waits until that file exists."""
        for message_id in ids:
            payload: dict[str, Any] = {"id": message_id, "sleep": sleep}
            if queue is not None:
                payload["queue"] = queue
            if gate is not None:
                payload["gate"] = str(gate)
            await self.publish(
                {"task": task, "payload": payload}, routing_key, message_id=f"m-{message_id}"
            )


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

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The probe's events so far (of every host of the test), optionally of one kind."""
        if not self.events_path.exists():
            return []
        events = [json.loads(line) for line in self.events_path.read_text().splitlines() if line]
        return [e for e in events if event is None or e["event"] == event]

    async def wait_for_events(
        self, event: str, count: int, within: float = 15.0
    ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` events of kind ``event`` were written."""

        def enough() -> list[dict[str, Any]] | None:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"host exited with {self.process.returncode} while waiting for {count} "
                    f"{event!r} events:\n{self.log}"
                )
            found = self.events(event)
            return found if len(found) >= count else None

        return await async_wait_for(  # type: ignore[no-any-return]
            enough, within=within, message=f"{count} {event!r} events"
        )

    def log_lines(self, containing: str = "") -> list[str]:
        return [line for line in self.log.splitlines() if containing in line]

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        def seen() -> bool:
            if self.process.poll() is not None and text not in self.log:
                raise AssertionError(
                    f"host exited with {self.process.returncode} before logging {text!r}:\n"
                    f"{self.log}"
                )
            return text in self.log

        wait_for(seen, timeout=timeout, message=f"{text!r} in the host log")

    async def async_wait_for_log(self, text: str, within: float = 15.0) -> None:
        await asyncio.to_thread(self.wait_for_log, text, within)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    async def async_wait_exit(self, within: float = 40.0) -> int:
        """The exit code, once the process ends by itself (no signal sent)."""
        return await asyncio.to_thread(self.process.wait, within)

    async def async_stop(self, sig: int = signal.SIGTERM, within: float = 40.0) -> int:
        """:meth:`stop` without blocking the test's event loop."""
        return await asyncio.to_thread(self.stop, sig, within)


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
