"""Compare the topology the plugins want with what the broker has, without changing it.

Each entity is first declared passively (does it exist? how deep, how many consumers?),
then, if it exists, declared with the wanted settings: identical settings are a no-op on
the broker, different ones fail with PRECONDITION_FAILED naming the differing argument.
Nothing missing is created.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import aiormq
from aio_pika import ExchangeType
from aio_pika.abc import AbstractConnection

from rabbitworker.broker import connect_operator
from rabbitworker.topology import Topology


@dataclass(slots=True)
class EntityStatus:
    """One exchange or queue: ``ok``, ``missing`` or ``differs``."""

    kind: str
    name: str
    role: str
    status: str
    detail: str = ""
    messages: int | None = None
    consumers: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _role(name: str, topology: Topology) -> str:
    spec = topology.queues[name]
    if spec.arguments.get("x-dead-letter-routing-key"):
        return "retry"
    if "x-dead-letter-exchange" in spec.arguments:
        return "work"
    return "dlq"


async def compare(amqp_url: str, topology: Topology) -> list[EntityStatus]:
    """Report every wanted exchange and queue as found on the broker at ``amqp_url``."""
    connection = await connect_operator(amqp_url)
    try:
        statuses = [
            await _exchange(connection, spec.name, spec.type)
            for spec in topology.exchanges.values()
        ]
        for spec in topology.queues.values():
            statuses.append(await _queue(connection, spec.name, spec.arguments, topology))
        return statuses
    finally:
        await connection.close()


async def _exchange(connection: AbstractConnection, name: str, kind: str) -> EntityStatus:
    status = EntityStatus("exchange", name, kind, "ok")
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        status.status, status.detail = "missing", "start rabbitworker-host to declare it"
        return status
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, ExchangeType(kind), durable=True)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        status.status, status.detail = "differs", str(exc)
        return status
    await channel.close()
    return status


async def _queue(
    connection: AbstractConnection, name: str, arguments: dict[str, Any], topology: Topology
) -> EntityStatus:
    status = EntityStatus("queue", name, _role(name, topology), "ok")
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        status.status, status.detail = "missing", "start rabbitworker-host to declare it"
        return status
    result = declared.declaration_result
    status.messages, status.consumers = result.message_count, result.consumer_count
    await channel.close()
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, durable=True, arguments=arguments or None)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        status.status = "differs"
        status.detail = (
            f"{exc}. Delete the queue (after draining it) so the host can declare it with "
            f"arguments {arguments}, or change the QueueConfig to match"
        )
        return status
    await channel.close()
    return status
