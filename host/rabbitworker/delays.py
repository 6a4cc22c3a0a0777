"""Delayed publishing in the broker: a cascade of waiting queues, one per power of two.

``publish_task(..., delay=13)`` rounds the delay up to whole seconds (13 = 8 + 4 + 1) and
publishes the message into the cascade with a routing key that spells those seconds in
binary, most significant bit first, followed by a key for its destination::

    0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.1.0.1.<destination key>

Each tier ``rabbitworker.delay.<2**n>s`` is an exchange and a queue of the same name. The
exchange reads bit ``n``: a 1 routes the message into the queue, where it waits ``2**n``
seconds (the queue's TTL) and is then dead-lettered by the broker to the next tier's
exchange; a 0 sends it on to that exchange straight away. After the 1 s tier, the delivery
exchange hands it to its destination's landing queue, which dead-letters it at once to the
exchange and routing key it was published for.

Nothing waits in the host and nothing is held unacknowledged: a waiting message is a
persistent message in a durable quorum queue, so it survives host and broker restarts and
the loss of a node. Every queue of a tier has one TTL, so messages leave it in the order
they entered; a message reaches its queue ``ceil(delay)`` seconds after it was stored, and
messages come out in the order they fall due, to the second. Dead-lettering between the
queues is at-least-once: a node lost at the wrong moment can deliver a message twice,
never zero times. A landing queue whose routing key reaches no queue keeps its messages and
the broker tries again until one is bound.

This module is pure: names, routing keys, delays. :mod:`rabbitworker.topology` plans and
declares the queues (:func:`~rabbitworker.topology.delay_topology`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rabbitworker.config import RESERVED_PREFIX

PREFIX = RESERVED_PREFIX
#: Tiers of 1, 2, 4, ... 2**21 seconds: any delay up to 48 days, to the second.
TIERS = 22
MAX_DELAY = 2**TIERS - 1
DELIVERY_EXCHANGE = PREFIX + "deliver"
#: The header a delayed message carries: when it falls due (ISO 8601, UTC).
HEADER_DUE_AT = "x-rabbitworker-due-at"
#: RabbitMQ's headers that each dead-lettering step adds to a waiting message.
_DEATH_HEADERS = ("x-first-death-queue", "x-first-death-reason", "x-first-death-exchange")
_MAX_NAME = 255
#: What AMQP 0-9-1 allows in a queue name (pamqp refuses anything else before sending);
#: a routing key may hold any text, so the readable landing name is not always a name.
_QUEUE_NAME = re.compile(r"[a-zA-Z0-9\-_.:@#,/+ ]*")


def tier_name(tier: int) -> str:
    """The exchange and queue of one tier: ``rabbitworker.delay.64s``."""
    return f"{PREFIX}{2**tier}s"


#: Where every delayed message enters: the longest tier's exchange.
ENTRY_EXCHANGE = tier_name(TIERS - 1)


def delay_seconds(delay: float) -> int:
    """``delay`` rounded up to whole seconds (never shorter than asked).

    :raises ValueError: a delay that is negative, not a number, or beyond :data:`MAX_DELAY`.
    """
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"delay must be a number of seconds >= 0, not {delay!r}")
    seconds = math.ceil(delay)
    if seconds > MAX_DELAY:
        raise ValueError(
            f"delay {delay:g} s is longer than the longest delay the broker-side tiers "
            f"support, {MAX_DELAY} s (48 days); schedule it from a job that runs later"
        )
    return seconds


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a delayed message goes once it is due."""

    exchange: str
    routing_key: str

    @property
    def key(self) -> str:
        """A fixed-size word for the routing key: names may hold dots and topic wildcards."""
        digest = hashlib.sha256(f"{self.exchange}\0{self.routing_key}".encode()).hexdigest()
        return digest[:20]

    @property
    def landing_queue(self) -> str:
        """``rabbitworker.delay.to.<exchange>.<routing key>.<key[:8]>``: readable in the
        management UI, and unique (``tasks`` + ``a.b`` and ``tasks.a`` + ``b`` read alike);
        only the key when the name would be longer than a queue name may be, or hold
        characters one may not (``*``, non-ASCII letters)."""
        name = f"{PREFIX}to.{self.exchange or 'amq.default'}.{self.routing_key}.{self.key[:8]}"
        if len(name.encode()) <= _MAX_NAME and _QUEUE_NAME.fullmatch(name):
            return name
        return f"{PREFIX}to.{self.key}"


def routing_key(seconds: int, destination: Destination) -> str:
    """The cascade routing key for a wait of ``seconds``: its bits, then the destination."""
    bits = format(seconds, f"0{TIERS}b")
    return ".".join((*bits, destination.key))


def bit_pattern(tier: int, bit: str) -> str:
    """The topic binding that matches keys whose bit ``tier`` is ``bit``."""
    return "*." * (TIERS - 1 - tier) + bit + ".#"


def next_exchange(tier: int) -> str:
    """Where a message goes after tier ``tier``: the next shorter tier, or delivery."""
    return tier_name(tier - 1) if tier > 0 else DELIVERY_EXCHANGE


def landing_pattern(destination: Destination) -> str:
    """The delivery exchange's binding to ``destination``'s landing queue."""
    return "*." * TIERS + destination.key


def is_delay_queue(name: object) -> bool:
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return isinstance(name, str) and name.startswith(PREFIX)


def without_delay_trace(headers: Mapping[str, Any]) -> dict[str, Any]:
    """``headers`` without what the cascade's dead-lettering wrote into them.

    The broker records every hop in ``x-death`` and names the first tier in
    ``x-first-death-*``; a dead letter's headers should say where it failed, not where it
    waited. Deaths of its own (a TTL expiry in the work queue) stay.
    """
    copy = dict(headers)
    deaths = copy.get("x-death")
    if isinstance(deaths, list):
        kept = [d for d in deaths if not (isinstance(d, dict) and is_delay_queue(d.get("queue")))]
        if kept:
            copy["x-death"] = kept
        else:
            copy.pop("x-death")
    if is_delay_queue(copy.get("x-first-death-queue")):
        for name in _DEATH_HEADERS:
            copy.pop(name, None)
        first = copy.get("x-death", [None])[-1]
        if isinstance(first, dict):
            copy["x-first-death-queue"] = first.get("queue")
            copy["x-first-death-reason"] = first.get("reason")
            copy["x-first-death-exchange"] = first.get("exchange")
    return copy
