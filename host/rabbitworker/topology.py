"""What the host declares on the broker, planned from the plugins' QueueConfigs.

:func:`plan_topology` is pure (no broker) and refuses contradictory configs before anything
is declared; :func:`declare_topology` then declares the plan on one channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel
from loguru import logger

from rabbitworker import delays
from rabbitworker.config import QueueConfig
from rabbitworker.errors import BrokerTopologyMismatchError, TopologyConflictError
from rabbitworker.plugins import QueueRegistration
from rabbitworker.policy import retry_queue_name

#: How far above ``delivery_limit`` a quorum queue's own ``x-delivery-limit`` is set.
QUORUM_DELIVERY_BACKSTOP = 100

#: Dead-letter exchanges are fanouts: every message dead-lettered through one reaches every
#: DLQ bound to it, whatever its original routing key.
DLX_TYPE = "fanout"


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    type: str
    wanted_by: str

    def describe(self) -> str:
        return f"{self.type} exchange {self.name!r} (for {self.wanted_by})"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any]
    bindings: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Topology:
    """Exchanges first, then queues, then their bindings: the order they are declared in."""

    exchanges: dict[str, ExchangeSpec] = field(default_factory=dict)
    queues: dict[str, QueueSpec] = field(default_factory=dict)
    #: ``(destination, source, routing_key)``: exchanges bound to exchanges.
    exchange_bindings: list[tuple[str, str, str]] = field(default_factory=list)


#: A quorum queue that dead-letters, declared so no dead letter is ever dropped between
#: queues: RabbitMQ's at-least-once dead-lettering (3.10+) needs ``reject-publish``.
QUORUM_DEAD_LETTERING = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def queue_arguments(config: QueueConfig) -> dict[str, Any]:
    """The ``x-`` arguments a work queue is declared with."""
    arguments: dict[str, Any] = {"x-dead-letter-exchange": config.dlx_exchange_name}
    arguments.update(config.arguments)
    for key, value in (
        ("x-max-priority", config.max_priority),
        ("x-message-ttl", None if config.message_ttl is None else round(config.message_ttl * 1000)),
        ("x-max-length", config.max_length),
        ("x-max-length-bytes", config.max_length_bytes),
        ("x-overflow", config.overflow),
        ("x-single-active-consumer", True if config.single_active_consumer else None),
    ):
        if value is not None:
            arguments[key] = value
    if config.queue_type == "quorum":
        arguments.update(QUORUM_DEAD_LETTERING)
        # The broker counts every return, clean shutdowns included, so the host enforces
        # delivery_limit itself (x-delivery-count minus the ledger's clean returns). The
        # broker's limit is a backstop far above it, explicit because RabbitMQ 4 would
        # otherwise apply a default of 20.
        arguments["x-delivery-limit"] = config.delivery_limit + QUORUM_DELIVERY_BACKSTOP
    return arguments


def retry_queues(config: QueueConfig) -> list[QueueSpec]:
    """One queue per distinct retry delay. A retried message is published to it with no
    consumer; when its TTL expires the broker dead-letters it through the default exchange
    straight back to the work queue. The wait costs the host nothing. A quorum work queue's
    delay queues are quorum too, dead-lettering at least once."""
    specs: dict[str, QueueSpec] = {}
    for delay in config.retry_schedule:
        name = retry_queue_name(config, delay)
        arguments: dict[str, Any] = {
            "x-message-ttl": round(delay * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": config.name,
        }
        if config.queue_type == "quorum":
            arguments.update(QUORUM_DEAD_LETTERING)
        specs[name] = QueueSpec(name, arguments, ())
    return list(specs.values())


def dlq_arguments(quorum: bool) -> dict[str, Any]:
    """A DLQ is quorum as soon as one quorum work queue dead-letters into it: a dead letter
    must survive the loss of a node as well as the message it came from."""
    return {"x-queue-type": "quorum"} if quorum else {}


def plan_topology(registrations: Sequence[QueueRegistration]) -> Topology:
    """Merge every queue's exchanges, DLX and DLQ; shared ones appear once.

    :raises TopologyConflictError: one name is wanted as two different things.
    """
    topology = Topology()
    dlq_of_dlx: dict[str, tuple[str, str]] = {}

    def want_exchange(spec: ExchangeSpec) -> None:
        existing = topology.exchanges.setdefault(spec.name, spec)
        if existing.type != spec.type:
            raise TopologyConflictError(
                f"exchange {spec.name!r} is wanted as {existing.describe()} and as "
                f"{spec.describe()}; give one of them another exchange name"
            )

    work_queues = {registration.config.name: registration for registration in registrations}
    bound: dict[tuple[str, str], QueueRegistration] = {}
    for registration in registrations:
        config, owner = registration.config, registration.plugin.describe()
        want_exchange(
            ExchangeSpec(
                config.exchange_name,
                config.exchange_type,
                f"queue {config.name!r} of plugin {owner}",
            )
        )
        want_exchange(
            ExchangeSpec(
                config.dlx_exchange_name,
                DLX_TYPE,
                f"dead letters of queue {config.name!r} of plugin {owner}",
            )
        )
        if config.dlq_name in work_queues:
            raise TopologyConflictError(
                f"queue {config.name!r} of plugin {owner} names {config.dlq_name!r} as its DLQ, "
                f"but that is a work queue of plugin "
                f"{work_queues[config.dlq_name].plugin.describe()}; choose another dlq_name"
            )
        topology.queues[config.name] = QueueSpec(
            config.name,
            queue_arguments(config),
            ((config.exchange_name, config.routing_key),),
        )
        if config.exchange_type == "direct":
            other = bound.setdefault((config.exchange_name, config.routing_key), registration)
            if other is not registration:
                shared = sorted(set(other.config.tasks) & set(config.tasks))
                raise TopologyConflictError(
                    f"queues {other.config.name!r} (plugin {other.plugin.describe()}) and "
                    f"{config.name!r} (plugin {owner}) are both bound to exchange "
                    f"{config.exchange_name!r} with routing key {config.routing_key!r}, so "
                    "every task message would be copied to both and run twice"
                    + (f" (both handle {', '.join(shared)})" if shared else "")
                    + ". Give one of them another routing_key (or exchange_name)."
                )
        for spec in retry_queues(config):
            if spec.name in work_queues:
                raise TopologyConflictError(
                    f"retry queue {spec.name!r} of queue {config.name!r} is also a work queue of "
                    f"plugin {work_queues[spec.name].plugin.describe()}; rename one of them"
                )
            topology.queues[spec.name] = spec
        dlq = topology.queues.setdefault(config.dlq_name, QueueSpec(config.dlq_name, {}, ()))
        binding = (config.dlx_exchange_name, "")
        quorum = bool(dlq.arguments) or config.queue_type == "quorum"
        topology.queues[config.dlq_name] = QueueSpec(
            dlq.name,
            dlq_arguments(quorum),
            dlq.bindings if binding in dlq.bindings else (*dlq.bindings, binding),
        )
        previous = dlq_of_dlx.setdefault(config.dlx_exchange_name, (config.dlq_name, config.name))
        if previous[0] != config.dlq_name:
            logger.warning(
                "DLX {!r} feeds both DLQ {!r} (queue {!r}) and DLQ {!r} (queue {!r}): each gets "
                "a copy of every dead letter of both. Give each DLQ its own dlx_exchange_name "
                "to keep them apart.",
                config.dlx_exchange_name,
                previous[0],
                previous[1],
                config.dlq_name,
                config.name,
            )
    return topology


def delay_topology(destination: delays.Destination, *, cascade: bool = True) -> Topology:
    """What a delayed message to ``destination`` passes through (:mod:`rabbitworker.delays`):
    every tier's topic exchange and quorum queue (unless ``cascade`` is false: declared
    already), the delivery exchange, and ``destination``'s landing queue."""
    topology = Topology()
    if cascade:
        wanted_by = "delayed publishing"
        for tier in reversed(range(delays.TIERS)):
            name = delays.tier_name(tier)
            topology.exchanges[name] = ExchangeSpec(name, "topic", wanted_by)
        topology.exchanges[delays.DELIVERY_EXCHANGE] = ExchangeSpec(
            delays.DELIVERY_EXCHANGE, "topic", wanted_by
        )
        for tier in reversed(range(delays.TIERS)):
            name, onward = delays.tier_name(tier), delays.next_exchange(tier)
            arguments: dict[str, Any] = {
                **QUORUM_DEAD_LETTERING,
                "x-message-ttl": 2**tier * 1000,
                "x-dead-letter-exchange": onward,
            }
            binding = (name, delays.bit_pattern(tier, "1"))
            topology.queues[name] = QueueSpec(name, arguments, (binding,))
            topology.exchange_bindings.append((onward, name, delays.bit_pattern(tier, "0")))
    landing = destination.landing_queue
    topology.queues[landing] = QueueSpec(
        landing,
        {
            **QUORUM_DEAD_LETTERING,
            # Due: hand it on at once, with the routing key it was published with.
            "x-message-ttl": 0,
            "x-dead-letter-exchange": destination.exchange,
            "x-dead-letter-routing-key": destination.routing_key,
        },
        ((delays.DELIVERY_EXCHANGE, delays.landing_pattern(destination)),),
    )
    return topology


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding of ``topology`` (all durable) on ``channel``.

    Declaring is idempotent, so it runs again after every reconnect and whenever a copy
    finds its dead-letter exchange or queue gone.

    :raises BrokerTopologyMismatchError: something exists on the broker with other settings.
    """
    for spec in topology.exchanges.values():
        try:
            await channel.exchange_declare(
                exchange=spec.name, exchange_type=spec.type, durable=True
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _conflict(
                f"exchange {spec.name!r}", f"a durable {spec.type} exchange", exc
            ) from exc
    for destination, source, routing_key in topology.exchange_bindings:
        await channel.exchange_bind(destination=destination, source=source, routing_key=routing_key)
    for queue_spec in topology.queues.values():
        try:
            await channel.queue_declare(
                queue=queue_spec.name, durable=True, arguments=queue_spec.arguments or None
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _conflict(
                f"queue {queue_spec.name!r}",
                f"a durable queue with arguments {queue_spec.arguments}",
                exc,
            ) from exc
        for exchange_name, routing_key in queue_spec.bindings:
            await channel.queue_bind(
                queue=queue_spec.name, exchange=exchange_name, routing_key=routing_key
            )


def copies_topology(topology: Topology, config: QueueConfig) -> Topology:
    """The part of ``topology`` that the copies of ``config``'s messages need: its DLX,
    its DLQ and that binding, and its retry queues."""
    part = Topology()
    part.exchanges[config.dlx_exchange_name] = topology.exchanges[config.dlx_exchange_name]
    for name in (config.dlq_name, *(retry_queue_name(config, d) for d in config.retry_schedule)):
        part.queues[name] = topology.queues[name]
    return part


def work_queue_topology(topology: Topology, config: QueueConfig) -> Topology:
    """The work queue of ``config`` with its exchange and binding (declared again on the
    consumer's channel before consuming, so a deleted queue comes back)."""
    part = Topology()
    part.exchanges[config.exchange_name] = topology.exchanges[config.exchange_name]
    part.queues[config.name] = topology.queues[config.name]
    return part


def _conflict(what: str, wanted: str, exc: Exception) -> BrokerTopologyMismatchError:
    return BrokerTopologyMismatchError(
        f"{what} already exists on the broker with other settings than {wanted} "
        f"(broker said: {exc}). Either change the QueueConfig to match what exists, or, if "
        "nothing else depends on it, move its messages away (e.g. a shovel) and delete it "
        "(rabbitmqctl delete_queue, or the management UI) so the host can declare it anew; "
        "deleting it drops the messages it holds."
    )


def _node(prefix: str, name: str) -> str:
    return prefix + "".join(ch if ch.isalnum() else "_" for ch in name)


def render(topology: Topology, registrations: Sequence[QueueRegistration], fmt: str) -> str:
    """Draw exchanges → queues → DLX → DLQ as ``mermaid``, ``dot`` or ``text``."""
    configs = {registration.config.name: registration.config for registration in registrations}
    edges: list[tuple[str, str, str, bool]] = []  # from, to, label, dead-letter edge
    for queue in topology.queues.values():
        for exchange_name, routing_key in queue.bindings:
            edges.append((_node("x_", exchange_name), _node("q_", queue.name), routing_key, False))
        dlx = queue.arguments.get("x-dead-letter-exchange")
        if queue.name in configs and dlx:
            edges.append((_node("q_", queue.name), _node("x_", dlx), "dead letters", True))
        elif dlx == "" and "x-dead-letter-routing-key" in queue.arguments:
            target = queue.arguments["x-dead-letter-routing-key"]
            ttl = queue.arguments.get("x-message-ttl", 0)
            edges.append((_node("q_", target), _node("q_", queue.name), "retry", True))
            edges.append((_node("q_", queue.name), _node("q_", target), f"after {ttl} ms", True))
    labels: dict[str, str] = {}
    for exchange in topology.exchanges.values():
        labels[_node("x_", exchange.name)] = f"{exchange.name} ({exchange.type})"
    for queue in topology.queues.values():
        config = configs.get(queue.name)
        detail = f"prefetch {config.prefetch_count}: {', '.join(config.tasks)}" if config else ""
        labels[_node("q_", queue.name)] = queue.name + (f"\\n{detail}" if detail else "")
    if fmt == "mermaid":
        lines = ["flowchart LR"]
        for node, label in labels.items():
            text = label.replace("\\n", "<br/>")
            shape = f'{{{{"{text}"}}}}' if node.startswith("x_") else f'["{text}"]'
            lines.append(f"    {node}{shape}")
        for source, target, label, dead in edges:
            arrow = f"-. {label} .->" if dead else (f"-- {label} -->" if label else "-->")
            lines.append(f"    {source} {arrow} {target}")
        return "\n".join(lines)
    if fmt == "dot":
        lines = ["digraph rabbitworker {", "    rankdir=LR;"]
        for node, label in labels.items():
            shape = "hexagon" if node.startswith("x_") else "box"
            lines.append(f'    {node} [label="{label}", shape={shape}];')
        for source, target, label, dead in edges:
            style = ", style=dashed" if dead else ""
            lines.append(f'    {source} -> {target} [label="{label}"{style}];')
        lines.append("}")
        return "\n".join(lines)
    if fmt == "text":
        names = {node: label.split("\\n")[0] for node, label in labels.items()}
        lines = []
        for source, target, label, dead in edges:
            arrow = "~~>" if dead else "-->"
            lines.append(
                f"{names[source]} {arrow} {names[target]}" + (f"  [{label}]" if label else "")
            )
        return "\n".join(lines)
    raise ValueError(f"unknown format {fmt!r}: use mermaid, dot or text")
