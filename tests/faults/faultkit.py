"""Helpers of the fault-injection suite: host processes running ``fault_plugin``, broker
outages, and the exact tally every fault test ends with.

Counting rules, the same in every test:

- *published*: the message ids the test handed to the broker (confirmed).
- *handled*: distinct ids with an ``end`` event, i.e. whose handler completed.
- *dead-lettered*: the copies drained from the DLQ, by id.
- *left*: what is still in the work queue (and its retry queues) once no host runs.
- *none missing*: handled, dead-lettered and left are disjoint and together are exactly
  the published ids.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
import httpx
from brokertools import (
    API,
    AUTH,
    AmqpClient,
    Broker,
    HostProcess,
    async_wait_for,
    closed_port,
    host_env,
    management_up,
)

QUEUE = "fault.q"
ROUTING_KEY = "fault"
DLQ = "tasks.dlq"


def fault_queue(**overrides: Any) -> dict[str, Any]:
    """QueueConfig keyword arguments of the suite's work queue."""
    return {"name": QUEUE, "routing_key": ROUTING_KEY, **overrides}


async def poll(
    predicate: Callable[[], Any],
    *,
    within: float,
    message: str,
    interval: float = 0.05,
) -> Any:
    """Call ``predicate`` (sync or async) until it returns something truthy, or fail."""
    return await async_wait_for(predicate, within=within, interval=interval, message=message)


class FaultRig:
    """Starts ``rabbitworker-host`` processes with ``fault_plugin``; all of a test's hosts
    append to one events file, so a restarted host continues the same record."""

    def __init__(self, amqp_url: str, workdir: Path) -> None:
        self.amqp_url = amqp_url
        self.workdir = workdir
        self.events_path = workdir / "fault-events.jsonl"
        self.gates = workdir / "gates"
        self.gates.mkdir()
        self.hosts: list[HostProcess] = []

    async def start(
        self, queues: list[dict[str, Any]] | None = None, *, wait: bool = True, **env: str
    ) -> HostProcess:
        """Start ``python -m rabbitworker``; with ``wait``, return once it consumes."""
        host = self.spawn(queues, **env)
        if wait:
            await host.async_wait_for_log("consuming from", within=20)
        return host

    def spawn(self, queues: list[dict[str, Any]] | None = None, **env: str) -> HostProcess:
        """Start a host process serving ``queues`` (default: the suite's one queue)."""
        index = len(self.hosts)
        config = self.workdir / f"fault-queues-{index}.json"
        config.write_text(json.dumps(queues if queues is not None else [fault_queue()]))
        log_path = self.workdir / f"fault-host-{index}.log"
        full_env = host_env(
            self.amqp_url,
            RABBITWORKER_PLUGINS="fault_plugin",
            FAULT_CONFIG=str(config),
            FAULT_EVENTS=str(self.events_path),
            FAULT_GATES=str(self.gates),
            **env,
        )
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "rabbitworker"],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        host = HostProcess(process, log_path, self.events_path)
        self.hosts.append(host)
        return host

    def kill_all(self) -> None:
        for host in self.hosts:
            if host.process.poll() is None:
                host.process.kill()
                host.process.wait(timeout=10)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        events = [json.loads(line) for line in lines if line]
        return [e for e in events if kind is None or e["event"] == kind]

    def handled(self) -> set[str]:
        """Distinct ids whose handler completed, in any host process of the test."""
        return {e["id"] for e in self.events("end")}

    def open_gate(self, name: str) -> None:
        """Let every handler waiting on ``payload.gate == name`` go on."""
        (self.gates / name).touch()

    async def wait_events(
        self,
        kind: str,
        count: int,
        *,
        within: float = 15.0,
        alive: HostProcess | None = None,
        distinct: bool = False,
    ) -> list[dict[str, Any]]:
        """Wait for ``count`` events of ``kind`` (``distinct``: of distinct ids), failing
        at once if the ``alive`` host exits meanwhile."""

        def enough() -> list[dict[str, Any]] | None:
            if alive is not None and alive.process.poll() is not None:
                raise AssertionError(
                    f"host exited with {alive.process.returncode} while waiting for {count} "
                    f"{kind!r} events:\n{alive.log[-5000:]}"
                )
            found = self.events(kind)
            seen = len({e["id"] for e in found}) if distinct else len(found)
            return found if seen >= count else None

        return await poll(  # type: ignore[no-any-return]
            enough, within=within, message=f"{count} {kind!r} events"
        )


class Unroutable(AssertionError):
    """A published message reached no queue."""


async def publish_raw(
    amqp: AmqpClient,
    body: bytes,
    message_id: str,
    *,
    content_type: str | None = None,
    routing_key: str = ROUTING_KEY,
    exchange: str = "tasks",
) -> None:
    """Publish any bytes, persistent (as publish_task does: a transient message would not
    survive a broker restart), confirmed, and checked to be routed to a queue."""
    target = (
        amqp.channel.default_exchange
        if exchange == ""
        else await amqp.channel.get_exchange(exchange, ensure=False)
    )
    message = aio_pika.Message(
        body,
        message_id=message_id,
        content_type=content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    result = await target.publish(message, routing_key, mandatory=True)
    # An unroutable mandatory message comes back as a Basic.Return before its confirm.
    if isinstance(getattr(result, "delivery", None), aiormq.spec.Basic.Return):
        raise Unroutable(f"{message_id!r}: no queue is bound to {routing_key!r}")


async def publish_tasks(
    amqp: AmqpClient, task: str, ids: Iterable[str], **payload: Any
) -> list[str]:
    """Publish ``{"task": task, "payload": payload}`` once per id (the AMQP message id)."""
    body = json.dumps({"task": task, "payload": payload}).encode()
    published = []
    for message_id in ids:
        await publish_raw(amqp, body, message_id, content_type="application/json")
        published.append(message_id)
    return published


@dataclass
class Tally:
    """Where every published message ended up. Take it once no host is running."""

    published: set[str]
    handled: set[str]
    dead: dict[str, dict[str, Any]]
    left: set[str]
    dead_copies: int
    left_copies: int
    completions: Counter[str] = field(default_factory=Counter)

    def check(self, *, published: int, handled: int, dead_lettered: int, left: int) -> None:
        """Assert the exact counts, and that no message is missing or counted twice."""
        summary = (
            f"published {len(self.published)}, handled {len(self.handled)}, dead-lettered "
            f"{self.dead_copies}, left {self.left_copies}"
        )
        assert len(self.published) == published, summary
        assert len(self.handled) == handled, summary
        assert self.dead_copies == dead_lettered, summary
        assert len(self.dead) == self.dead_copies, f"a message was dead-lettered twice: {summary}"
        assert self.left_copies == left, summary
        assert len(self.left) == self.left_copies, f"a message was left twice: {summary}"
        assert not self.handled & set(self.dead), "handled and dead-lettered"
        assert not self.handled & self.left, "handled and still in the queue"
        assert not set(self.dead) & self.left, "dead-lettered and still in the queue"
        accounted = self.handled | set(self.dead) | self.left
        assert accounted == self.published, (
            f"missing: {sorted(self.published - accounted)[:10]}, "
            f"never published: {sorted(accounted - self.published)[:10]}"
        )


async def take_tally(
    rig: FaultRig,
    amqp: AmqpClient,
    published: Iterable[str],
    *,
    queues: Iterable[str] = (QUEUE,),
) -> Tally:
    """Drain the DLQ and the work queues (no host may be running) and count."""
    for host in rig.hosts:
        assert host.process.poll() is not None, "stop every host before taking the tally"
    dead_messages = await amqp.take_all(DLQ)
    left_messages = [m for queue in queues for m in await amqp.take_all(queue)]
    return Tally(
        published=set(published),
        handled=rig.handled(),
        dead={str(m.message_id): dict(m.headers or {}) for m in dead_messages},
        left={str(m.message_id) for m in left_messages},
        dead_copies=len(dead_messages),
        left_copies=len(left_messages),
        completions=Counter(e["id"] for e in rig.events("end")),
    )


# -- the broker going away -----------------------------------------------------------------


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def _amqp_answers(url: str) -> bool:
    try:
        connection = await aio_pika.connect(url, timeout=2)
    except Exception:
        return False
    await connection.close()
    return True


@asynccontextmanager
async def broker_outage(amqp_url: str) -> AsyncIterator[None]:
    """``rabbitmqctl stop_app`` on entry; on exit, whatever happened inside,
    ``start_app`` and wait until AMQP and the management API answer again.

    Only for the tests about a broker restart: it stops the broker for everyone.
    """
    await asyncio.to_thread(_rabbitmqctl, "stop_app")
    try:
        yield
    finally:
        await asyncio.to_thread(_rabbitmqctl, "start_app")
        await asyncio.to_thread(_rabbitmqctl, "await_startup")
        await poll(lambda: _amqp_answers(amqp_url), within=60, message="AMQP after start_app")
        await poll(
            lambda: asyncio.to_thread(management_up),
            within=60,
            message="the management API after start_app",
        )


async def exit_code(host: HostProcess, within: float) -> int:
    """Wait for ``host`` to exit on its own (no signal sent, unlike HostProcess.stop)."""
    return await asyncio.to_thread(host.process.wait, within)


# -- the broker's management API and alarms, for the fault cases of the settlement core ----


def _api_path(broker: Broker, kind: str, name: str = "") -> str:
    base = f"{broker.api}/{kind}/{quote(broker.vhost, safe='')}"
    return f"{base}/{quote(name, safe='')}" if name else base


async def delete_exchange(broker: Broker, name: str) -> None:
    """Delete an exchange under the running host, as an operator would."""
    response = await asyncio.to_thread(
        httpx.delete, _api_path(broker, "exchanges", name), auth=AUTH, timeout=10
    )
    response.raise_for_status()


async def delete_queue(broker: Broker, name: str) -> None:
    """Delete a queue (and the messages in it) under the running host."""
    response = await asyncio.to_thread(
        httpx.delete, _api_path(broker, "queues", name), auth=AUTH, timeout=10
    )
    response.raise_for_status()


async def connections_named(broker: Broker, prefix: str) -> list[dict[str, Any]]:
    """This vhost's connections whose client connection_name starts with ``prefix``
    (the management API lists a new connection a moment late: poll for it)."""
    response = await asyncio.to_thread(
        httpx.get,
        f"{broker.api}/vhosts/{quote(broker.vhost, safe='')}/connections",
        auth=AUTH,
        timeout=10,
    )
    response.raise_for_status()
    return [
        c
        for c in response.json()
        if str((c.get("client_properties") or {}).get("connection_name", "")).startswith(prefix)
    ]


async def force_close_connections(broker: Broker, prefix: str, *, within: float = 15) -> int:
    """Close (``DELETE /api/connections/{name}``) every connection of this vhost named
    ``prefix...``, waiting until there is at least one; returns how many were closed."""
    found = await poll(
        lambda: connections_named(broker, prefix),
        within=within,
        interval=0.2,
        message=f"a connection named {prefix!r}",
    )
    for connection in found:
        await close_connection(broker, str(connection["name"]))
    return len(found)


async def close_connection(broker: Broker, name: str) -> None:
    """``DELETE /api/connections/{name}`` (the broker's name of it): the broker closes it
    with CONNECTION_FORCED. One already gone counts as closed."""
    response = await asyncio.to_thread(
        httpx.delete,
        f"{broker.api}/connections/{quote(name, safe='')}",
        auth=AUTH,
        timeout=10,
        headers={"X-Reason": "closed by the fault suite"},
    )
    if response.status_code != 404:
        response.raise_for_status()


async def channels_of(broker: Broker, connection_name: str) -> list[dict[str, Any]]:
    """The channels the broker holds open on one connection (by its broker-side name)."""
    response = await asyncio.to_thread(
        httpx.get,
        f"{broker.api}/connections/{quote(connection_name, safe='')}/channels",
        auth=AUTH,
        timeout=10,
    )
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def _current_watermark() -> str:
    """The broker's memory high watermark as ``set_vm_memory_high_watermark`` takes it."""
    done = subprocess.run(
        ["rabbitmqctl", "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    value = done.stdout.strip()
    try:
        if float(value) > 0:
            return value
    except ValueError:
        pass
    return "0.4"  # the broker's default; an absolute setting is not read back here


@asynccontextmanager
async def memory_alarm() -> AsyncIterator[None]:
    """Raise the broker's memory alarm (watermark 0) until the block ends, whatever happens
    inside; then the previous watermark again. It blocks every publishing connection of the
    broker (everyone's): hold it only for seconds."""
    previous = await asyncio.to_thread(_current_watermark)
    await asyncio.to_thread(_rabbitmqctl, "set_vm_memory_high_watermark", "0")
    try:
        await poll(
            lambda: asyncio.to_thread(_memory_alarm_raised),
            within=20,
            interval=0.2,
            message="the memory alarm to be raised",
        )
        yield
    finally:
        await asyncio.to_thread(_rabbitmqctl, "set_vm_memory_high_watermark", previous)
        await poll(
            lambda: asyncio.to_thread(lambda: not _memory_alarm_raised()),
            within=30,
            interval=0.2,
            message="the memory alarm to clear",
        )


def _memory_alarm_raised() -> bool:
    response = httpx.get(f"{API}/nodes", auth=AUTH, timeout=10)
    response.raise_for_status()
    return any(node.get("mem_alarm") for node in response.json())


def free_port() -> int:
    """A local TCP port free right now (for RABBITWORKER_METRICS_PORT)."""
    return closed_port()


async def scrape(port: int, path: str = "/metrics") -> httpx.Response:
    """GET the host's metrics server."""
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def metric_value(port: int, name: str, labels: str) -> float | None:
    """One sample of the host's /metrics, e.g. ``("rabbitworker_messages_in_flight",
    'queue="fault.q"')``; ``None`` if absent."""
    text = (await scrape(port)).text
    wanted = f"{name}{{{labels}}} "
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line[len(wanted) :])
    return None


def starts_per_id(rig: FaultRig) -> Counter[str]:
    """How many times each message's handler was entered, in every host of the test."""
    return Counter(e["id"] for e in rig.events("start"))


async def messages_anywhere(amqp: AmqpClient, broker: Broker) -> dict[str, int]:
    """Every queue of the vhost holding ready messages, with its exact count (AMQP, not the
    management API's statistics, which lag seconds behind)."""
    found = {}
    for name in broker.queues():
        if count := await amqp.ready(name):
            found[name] = count
    return found
