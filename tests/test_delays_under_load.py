"""Delayed publishing attacked from outside: volume, order, first-use races, odd destinations
and odd delays, each on the real broker with an exact tally (``delaytools``).

Every test prints one ``DELAYS ...`` line (``pytest -s`` shows it) with what it measured.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiormq
import pytest
from brokertools import AmqpClient, Broker, HostProcess, async_wait_for
from delaytools import (
    DelayTally,
    Sent,
    delay_queue_names,
    held_after_stats_settle,
    publish_delayed,
    ready_counts,
    starts_of,
)

from rabbitworker import close_publishers, delays
from rabbitworker.delays import Destination
from rabbitworker.publish import TaskPublisher
from rabbitworker.settings import HostSettings

pytestmark = pytest.mark.broker

QUEUE = {"name": "later.q", "routing_key": "later"}


async def settle_and_tally(
    host: HostProcess,
    amqp: AmqpClient,
    broker: Broker,
    sent: dict[str, Sent],
    *,
    within: float,
    destinations: tuple[Destination, ...] = (Destination("tasks", "later"),),
    queues: tuple[str, ...] = ("later.q",),
) -> DelayTally:
    """Wait until every sent id was handled, give duplicates a second and a half to show,
    then count what is left in every queue of the cascade and the work queues."""
    await async_wait_for(
        lambda: {str(e["id"]) for e in host.events("start")} >= set(sent),
        within=within,
        interval=0.2,
        message=f"{len(sent)} delayed messages handled",
    )
    await asyncio.sleep(1.5)  # a duplicate would follow within the tier resolution
    names = [*delay_queue_names(*destinations), *queues, "tasks.dlq"]
    left = await ready_counts(amqp, names)
    left |= await held_after_stats_settle(broker)
    return DelayTally(sent, starts_of(host.events()), left)


async def test_two_thousand_concurrent_delayed_publishes_arrive_once_each_in_due_order(
    start_host: Callable[..., HostProcess], amqp: AmqpClient, broker: Broker
) -> None:
    host = start_host([{**QUEUE, "prefetch_count": 1}])
    rng = random.Random(20261201)
    asked = {f"v-{i}": rng.uniform(1, 8) for i in range(2000)}
    try:
        sent = await publish_delayed(asked, "later", batch=200)
    finally:
        await close_publishers()
    publishing = max(s.returned for s in sent.values()) - min(s.began for s in sent.values())

    tally = await settle_and_tally(host, amqp, broker, sent, within=60)

    print("\n" + tally.line("2000 concurrent, prefetch 1", publishing=f"{publishing:.2f} s"))
    tally.check()
    # Ordered to the tier resolution (1 s) by when the broker stored each message; counted
    # from the calls' start, the wait for a confirm under a burst adds to that.
    assert tally.max_inversion(stored=True) < 1.0
    assert tally.max_inversion() < 1.0 + max(s.returned - s.began for s in sent.values())


async def test_fifty_concurrent_first_delayed_publishes_to_five_keys_declare_once_per_key(
    start_host: Callable[..., HostProcess],
    amqp: AmqpClient,
    broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [f"first.{n}" for n in range(5)]
    host = start_host(
        [{"name": f"{key}.q", "routing_key": key, "prefetch_count": 10} for key in keys]
    )
    # The declaring passes run on throwaway channels without confirms (run_on_channel):
    # count those opens on the publisher's connection, and nothing else is touched.
    opened = Counter[bool]()
    original = aiormq.Connection.channel

    async def counting(self: aiormq.Connection, *args: Any, **kwargs: Any) -> Any:
        opened[bool(kwargs.get("publisher_confirms", True))] += 1
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(aiormq.Connection, "channel", counting)
    ids = {f"r-{n}": keys[n % 5] for n in range(50)}
    sent: dict[str, Sent] = {}
    try:
        batches = await asyncio.gather(*(publish_delayed({i: 2}, key) for i, key in ids.items()))
    finally:
        await close_publishers()
    for batch in batches:
        sent |= batch

    destinations = tuple(Destination("tasks", key) for key in keys)
    tally = await settle_and_tally(
        host,
        amqp,
        broker,
        sent,
        within=20,
        destinations=destinations,
        queues=tuple(f"{key}.q" for key in keys),
    )
    delay_queues = [name for name in broker.queues() if delays.is_delay_queue(name)]

    print(
        "\n"
        + tally.line(
            "50 first publishes, 5 keys",
            declaring_channels=opened[False],
            publishing_channels=opened[True],
            delay_queues=len(delay_queues),
        )
    )
    tally.check()
    arrived = {str(e["id"]): e["arrived_on"] for e in host.events("start")}
    assert arrived == {i: f"{key}.q" for i, key in ids.items()}, "each on its key's queue"
    assert opened[False] == 5, "one declaring pass per destination: the cascade once"
    assert opened[True] == 1, "every publish on the one confirming channel"
    assert len(delay_queues) == delays.TIERS + 5


# -- odd destinations ------------------------------------------------------------------------


async def test_two_destinations_whose_names_join_to_the_same_text_both_get_their_messages(
    start_host: Callable[..., HostProcess], amqp: AmqpClient, broker: Broker
) -> None:
    # "tasks" + "email.send" and "tasks.email" + "send": both spell tasks.email.send.
    queues = [
        {"name": "a.q", "routing_key": "email.send", "exchange_name": "tasks"},
        {"name": "b.q", "routing_key": "send", "exchange_name": "tasks.email"},
    ]
    host = start_host(queues)
    try:
        sent = await publish_delayed({"to-a": 1}, "email.send", exchange_name="tasks")
        sent |= await publish_delayed({"to-b": 1}, "send", exchange_name="tasks.email")
    finally:
        await close_publishers()

    destinations = (Destination("tasks", "email.send"), Destination("tasks.email", "send"))
    tally = await settle_and_tally(
        host, amqp, broker, sent, within=15, destinations=destinations, queues=("a.q", "b.q")
    )
    print("\n" + tally.line("joined names"))
    tally.check()
    arrived = {str(e["id"]): e["arrived_on"] for e in host.events("start")}
    assert arrived == {"to-a": "a.q", "to-b": "b.q"}


async def test_wildcards_and_dots_in_a_routing_key_reach_exactly_the_queue_bound_with_it(
    start_host: Callable[..., HostProcess], amqp: AmqpClient, broker: Broker
) -> None:
    odd = "odd.#.*.kéy"
    # A decoy on the same exchange that a wildcard would reach if the key were a pattern.
    host = start_host(
        [{"name": "odd.q", "routing_key": odd}, {"name": "decoy.q", "routing_key": "odd.x.y.kéy"}]
    )
    try:
        sent = await publish_delayed({"w-1": 1, "w-2": 2}, odd)
    finally:
        await close_publishers()

    tally = await settle_and_tally(
        host,
        amqp,
        broker,
        sent,
        within=15,
        destinations=(Destination("tasks", odd),),
        queues=("odd.q", "decoy.q"),
    )
    print("\n" + tally.line("wildcard key"))
    tally.check()
    assert {e["arrived_on"] for e in host.events("start")} == {"odd.q"}


async def test_a_delayed_message_to_the_default_exchange_reaches_the_queue_named_by_its_key(
    start_host: Callable[..., HostProcess], amqp: AmqpClient, broker: Broker
) -> None:
    host = start_host([QUEUE])
    try:
        sent = await publish_delayed({"d-1": 1, "d-2": 3}, "later.q", exchange_name="")
    finally:
        await close_publishers()

    tally = await settle_and_tally(
        host, amqp, broker, sent, within=15, destinations=(Destination("", "later.q"),)
    )
    print("\n" + tally.line("default exchange"))
    tally.check()
    assert {e["arrived_on"] for e in host.events("start")} == {"later.q"}


async def test_eight_publishers_declaring_the_cascade_at_once_all_get_their_messages_through(
    start_host: Callable[..., HostProcess], amqp: AmqpClient, broker: Broker
) -> None:
    host = start_host([{**QUEUE, "prefetch_count": 10}])
    # Eight web workers starting at once: each its own connection, each declaring.
    publishers = [TaskPublisher(HostSettings()) for _ in range(8)]
    try:
        batches = await asyncio.gather(
            *(
                publish_delayed({f"p-{n}": 1}, "later", publish=publisher.publish)
                for n, publisher in enumerate(publishers)
            )
        )
    finally:
        for publisher in publishers:
            await publisher.close()
    sent = {i: s for batch in batches for i, s in batch.items()}

    tally = await settle_and_tally(host, amqp, broker, sent, within=15)

    print("\n" + tally.line("8 publishers declaring at once"))
    tally.check()
    assert len([n for n in broker.queues() if delays.is_delay_queue(n)]) == delays.TIERS + 1
