"""Helpers of the delayed-publishing tests: publish with a delay while noting when each call
began, then count, per message id, how often and how soon after asked it was handled.

Counting rules, the same in every delay test:

- *published*: the ids whose ``publish_task(..., delay=)`` returned (the broker confirmed).
- *handled*: distinct ids with a handler start; *duplicates*: ids started more than once.
- *lost*: published ids never handled (nor dead-lettered, nor left in a queue).
- *early*: ids whose first start came sooner than their delay after the publish call
  *began*: the message is stored no sooner than that, so nothing may be handled earlier.
- *left*: messages still in any queue of the vhost (the tiers, landing queues, the work
  queue, the DLQ), ready or held for dead-lettering, once everything is due and handled.
- *inversion*: for handlings in order, how much earlier a message was due than one handled
  before it (by due time = call began + asked delay). 0 means handled in due order. The
  broker can only order by when it stored a message (between the call's start and its
  confirm), so the inversion *from the confirms* counts the later message as due at its
  confirm + delay: what remains is the cascade's own disorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from brokertools import AmqpClient, Broker, async_wait_for

from rabbitworker import delays, publish_task

Publish = Callable[..., Awaitable[str]]


@dataclass(frozen=True)
class Sent:
    """One confirmed delayed publish: the delay asked and when the call began and returned."""

    asked: float
    began: float
    returned: float

    @property
    def due(self) -> float:
        return self.began + self.asked


async def publish_delayed(
    asked: Mapping[str, float],
    routing_key: str,
    *,
    exchange_name: str = "tasks",
    batch: int = 1,
    body: Callable[[str], dict[str, Any]] | None = None,
    publish: Publish = publish_task,
    **options: Any,
) -> dict[str, Sent]:
    """Publish one message per id (also its AMQP message id) with its delay, ``batch`` calls
    at a time (``asyncio.gather``); every call must return. ``body`` defaults to a probe
    ``work`` task whose ``payload.id`` is the id."""
    sent: dict[str, Sent] = {}

    async def one(message_id: str) -> None:
        message = body(message_id) if body else {"task": "work", "payload": {"id": message_id}}
        began = time.monotonic()
        await publish(
            message,
            routing_key,
            exchange_name=exchange_name,
            message_id=message_id,
            delay=asked[message_id],
            **options,
        )
        sent[message_id] = Sent(asked[message_id], began, time.monotonic())

    ids = list(asked)
    for start in range(0, len(ids), batch):
        await asyncio.gather(*(one(message_id) for message_id in ids[start : start + batch]))
    return sent


def delay_queue_names(*destinations: delays.Destination) -> list[str]:
    """Every tier of the cascade and the landing queues of ``destinations``."""
    names = [delays.tier_name(tier) for tier in range(delays.TIERS)]
    return names + [destination.landing_queue for destination in destinations]


async def ready_counts(amqp: AmqpClient, names: Iterable[str]) -> dict[str, int]:
    """Exact ready counts (AMQP passive declares) of the queues that have messages."""
    counts = {}
    for name in names:
        if count := await amqp.ready(name):
            counts[name] = count
    return counts


def held_for_dead_lettering(queues: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Quorum queues' messages the broker is still dead-lettering (at-least-once keeps
    them, as ``messages_dlx``, until the next queue confirmed them), from management stats."""
    return {q["name"]: int(q["messages_dlx"]) for q in queues if q.get("messages_dlx")}


@dataclass
class DelayTally:
    """Where every delayed message ended up, and when."""

    sent: dict[str, Sent]
    #: (id, monotonic time) of every handler start, in the order the handlers started.
    starts: list[tuple[str, float]]
    left: dict[str, int]

    @property
    def handled(self) -> Counter[str]:
        return Counter(message_id for message_id, _ in self.starts)

    @property
    def duplicates(self) -> dict[str, int]:
        return {i: n for i, n in self.handled.items() if n > 1}

    @property
    def lost(self) -> set[str]:
        return set(self.sent) - set(self.handled)

    @property
    def strangers(self) -> set[str]:
        """Handled ids that were never published: a test mistake or a corrupted id."""
        return set(self.handled) - set(self.sent)

    def first_start(self) -> dict[str, float]:
        first: dict[str, float] = {}
        for message_id, t in self.starts:
            first.setdefault(message_id, t)
        return first

    def over(self) -> dict[str, float]:
        """Seconds each message was handled after it was due (negative: early)."""
        return {i: t - self.sent[i].due for i, t in self.first_start().items() if i in self.sent}

    @property
    def early(self) -> dict[str, float]:
        return {i: round(s, 3) for i, s in self.over().items() if s < 0}

    def max_inversion(self, *, stored: bool = False) -> float:
        """The largest ``due(earlier handled) - due(later handled)`` over first handlings,
        due counted from when each publish call began. With ``stored``, only what the
        broker is answerable for: a message is stored somewhere between its call's start and
        its confirm, so the later one counts as due at its latest (confirm + delay)."""
        latest_due = float("-inf")
        worst = 0.0
        for message_id in self.first_start():
            if message_id not in self.sent:
                continue
            sent = self.sent[message_id]
            due = sent.returned + sent.asked if stored else sent.due
            worst = max(worst, latest_due - due)
            latest_due = max(latest_due, sent.due)
        return worst

    def line(self, name: str, **extra: Any) -> str:
        over = self.over().values()
        spread = f"{min(over):+.3f}..{max(over):+.3f} s" if over else "n/a"
        more = "".join(f", {k} {v}" for k, v in extra.items())
        return (
            f"DELAYS {name}: published {len(self.sent)}, handled {len(self.handled)}, "
            f"duplicated {len(self.duplicates)}, lost {len(self.lost)}, "
            f"left {sum(self.left.values())}, early {len(self.early)}, "
            f"handled after due {spread}, max inversion {self.max_inversion():.3f} s "
            f"(from the confirms: {self.max_inversion(stored=True):.3f} s){more}"
        )

    def check(self, *, duplicates_allowed: int = 0, left: Mapping[str, int] | None = None) -> None:
        """Everything handled, none early, nothing left (or exactly ``left``), no more than
        ``duplicates_allowed`` ids handled twice."""
        summary = self.line("tally")
        assert not self.strangers, f"handled but never published: {sorted(self.strangers)[:5]}"
        assert not self.lost, f"lost {sorted(self.lost)[:10]}: {summary}"
        assert self.early == {}, f"handled sooner than asked: {summary}"
        assert len(self.duplicates) <= duplicates_allowed, f"{self.duplicates}: {summary}"
        assert self.left == dict(left or {}), f"left in queues: {self.left}: {summary}"


def starts_of(events: Sequence[Mapping[str, Any]], key: str = "id") -> list[tuple[str, float]]:
    """(id, t) of the ``start`` events of a probe's or fault plugin's event list."""
    return [(str(e[key]), float(e["t"])) for e in events if e["event"] == "start"]


async def held_after_stats_settle(broker: Broker, within: float = 12.0) -> dict[str, int]:
    """:func:`held_for_dead_lettering` once the management statistics (emitted every 5 s)
    caught up: polled until none is held, or what is still held after ``within`` s."""
    held: dict[str, int] = {}

    def none_held() -> bool:
        nonlocal held
        held = held_for_dead_lettering(broker.queues().values())
        return not held

    with contextlib.suppress(AssertionError):
        await async_wait_for(none_held, within=within, interval=1, message="no messages_dlx")
    return held
