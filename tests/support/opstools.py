"""Helpers of the operator-facing tests: the CLI's JSON, dead letters made by a real host,
queue contents read in order, the metrics endpoint, and a broker outage."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
from brokertools import AUTH, AmqpClient, Broker, async_wait_for, management_up, wait_for
from prometheus_client.parser import text_string_to_metric_families

from rabbitworker import QueueConfig
from rabbitworker.errors import PluginInfo
from rabbitworker.plugins import QueueRegistration
from rabbitworker.topology import declare_topology, plan_topology

DLQ = "tasks.dlq"
PROBE_Q = {"name": "probe.q", "routing_key": "probe"}
OTHER_Q = {"name": "other.q", "routing_key": "other"}
#: A scrape of ``/metrics``: sample value by sample name and labels.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def cli_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful command printed on stdout."""
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr}"
    return json.loads(result.stdout)


def table_cells(table: str, name: str) -> list[str]:
    """The cells of the row of a printed table whose second column is ``name``."""
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("│ \n").split("│")]
        if len(cells) > 1 and cells[1] == name:
            return cells
    raise AssertionError(f"no row for {name!r} in:\n{table}")


def task_message(task: str, message_id: str, **payload: Any) -> dict[str, Any]:
    """A probe message; ``payload.id`` is the message id, so probe events name it."""
    return {"task": task, "payload": {"id": message_id, **payload}}


async def send(
    amqp: AmqpClient, routing_key: str, message_id: str, task: str = "work", **payload: Any
) -> None:
    """Publish one probe message (confirmed and routed) with ``message_id``."""
    await amqp.publish(
        task_message(task, message_id, **payload), routing_key, message_id=message_id
    )


async def wait_ready(amqp: AmqpClient, queue: str, count: int, within: float = 15.0) -> None:
    """Wait until exactly ``count`` messages are ready in ``queue``."""

    async def reached() -> bool:
        return await amqp.ready(queue) == count

    await async_wait_for(reached, within=within, message=f"{count} message(s) in {queue}")


async def dead_letter_in_order(
    amqp: AmqpClient, letters: Sequence[tuple[str, str, str]], dlq: str = DLQ
) -> list[str]:
    """Publish ``(routing key, message id, task)`` one at a time, each only once the one
    before reached the DLQ, so the DLQ's order is the list's order even across queues."""
    already = await amqp.ready(dlq)
    for index, (routing_key, message_id, task) in enumerate(letters, start=1):
        await send(amqp, routing_key, message_id, task)
        await wait_ready(amqp, dlq, already + index)
    return [message_id for _, message_id, _ in letters]


async def take_ids(amqp: AmqpClient, queue: str) -> list[str]:
    """Remove every ready message of ``queue``; their ids in queue order."""
    return [str(message.message_id) for message in await amqp.take_all(queue)]


async def declare_like_the_host(amqp_url: str, queues: Sequence[dict[str, Any]]) -> None:
    """Declare what a host serving ``queues`` (probe QueueConfig kwargs) would declare,
    with the host's own topology code, without starting a host."""

    async def unused(message: dict[str, Any]) -> None:
        raise AssertionError("nothing consumes in these tests")

    registrations = [
        QueueRegistration(QueueConfig(task_handlers={"work": unused}, **queue), PluginInfo("ops"))
        for queue in queues
    ]
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        # The host declares on aiormq's channel, under aio-pika's.
        await declare_topology(await channel.get_underlay_channel(), plan_topology(registrations))
    finally:
        await connection.close()


def delete_queue(broker: Broker, queue: str) -> None:
    """Delete ``queue`` through the management API, as an operator might by mistake."""
    response = httpx.delete(
        f"{broker.api}/queues/{quote(broker.vhost, safe='')}/{quote(queue, safe='')}",
        auth=AUTH,
        timeout=10,
    )
    response.raise_for_status()


# -- metrics and health --------------------------------------------------------------------


def http_status(port: int, path: str) -> int | None:
    """The status of ``GET path`` on the host's metrics port; ``None`` if nothing answers."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
    except httpx.HTTPError:
        return None


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, by sample name and labels."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    """The sum of every series of sample ``name``."""
    return sum(value for (sample_name, _), value in samples.items() if sample_name == name)


# -- the broker going away -----------------------------------------------------------------


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def broker_stopped() -> Iterator[None]:
    """``rabbitmqctl stop_app`` for the block; afterwards, whatever happened inside,
    ``start_app`` and wait until the broker has booted and its management API answers.

    It stops the broker for everyone: only for tests marked ``faults``.
    """
    _rabbitmqctl("stop_app")
    try:
        yield
    finally:
        _rabbitmqctl("start_app")
        _rabbitmqctl("await_startup")
        wait_for(management_up, timeout=60, interval=0.2, message="the management API")
