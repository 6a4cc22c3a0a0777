"""Delayed publishing: ``publish_task(..., delay=S)`` and ``publish --delay S``.

The message waits in the broker's delay cascade (``rabbitworker.delays``) and reaches its
queue no sooner than asked. The plan is checked as pure logic (every delay's path through
the tiers adds up to it, to the second); the rest runs on the real broker with exact counts.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from brokertools import AUTH, AmqpClient, Broker, HostProcess, async_wait_for
from hypothesis import given
from hypothesis import strategies as st
from opstools import declare_like_the_host, delete_queue

from rabbitworker import (
    ExchangeNotFoundError,
    InvalidQueueConfigError,
    PublishNotSentError,
    PublishRefusedError,
    QueueConfig,
    close_publishers,
    delays,
    publish_task,
    publish_task_sync,
)
from rabbitworker.delays import Destination
from rabbitworker.publish import close_sync_publisher
from rabbitworker.topology import Topology, delay_topology

QUEUE = {"name": "later.q", "routing_key": "later"}


# -- the plan, pure ------------------------------------------------------------------------


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""
    regex = ""
    for index, word in enumerate(pattern.split(".")):
        dot = r"\." if index else ""
        if word == "#":
            regex += r"(\..*)?" if index else r"(.*)?"
        elif word == "*":
            regex += dot + r"[^.]+"
        else:
            regex += dot + re.escape(word)
    return re.fullmatch(regex, key) is not None


def walk(topology: Topology, key: str) -> tuple[int, str]:
    """Follow a message with routing key ``key`` through the cascade as the broker would:
    the seconds it waits in all, and the landing queue it ends in."""
    exchange, waited = delays.ENTRY_EXCHANGE, 0
    for _ in range(3 * delays.TIERS):
        queues = [
            q
            for q in topology.queues.values()
            if any(src == exchange and topic_matches(p, key) for src, p in q.bindings)
        ]
        onward = [
            dest
            for dest, src, p in topology.exchange_bindings
            if src == exchange and topic_matches(p, key)
        ]
        assert len(queues) + len(onward) == 1, f"{key} routes to exactly one place at {exchange}"
        if onward:
            exchange = onward[0]
            continue
        queue = queues[0]
        waited += queue.arguments["x-message-ttl"] // 1000
        if queue.name.startswith(delays.PREFIX + "to."):
            return waited, queue.name
        exchange = queue.arguments["x-dead-letter-exchange"]
    raise AssertionError(f"{key} never reached a landing queue")


@given(st.integers(min_value=1, max_value=delays.MAX_DELAY))
def test_every_delay_passes_through_tiers_that_add_up_to_it(seconds: int) -> None:
    destination = Destination("tasks", "later")
    topology = delay_topology(destination)

    waited, landing = walk(topology, delays.routing_key(seconds, destination))

    assert waited == seconds
    assert landing == destination.landing_queue


def test_the_tiers_cover_every_delay_from_one_second_to_thirty_days() -> None:
    topology = delay_topology(Destination("tasks", "later"))
    ttls = sorted(
        q.arguments["x-message-ttl"]
        for q in topology.queues.values()
        if "x-message-ttl" in q.arguments
    )

    assert ttls[0] == 0, "the landing queue hands a due message on at once"
    assert ttls[1:] == [2**n * 1000 for n in range(delays.TIERS)]
    assert delays.MAX_DELAY >= 30 * 24 * 3600


def test_every_delay_queue_is_quorum_and_dead_letters_at_least_once() -> None:
    topology = delay_topology(Destination("tasks", "later"))

    for queue in topology.queues.values():
        assert queue.arguments["x-queue-type"] == "quorum", queue.name
        assert queue.arguments["x-dead-letter-strategy"] == "at-least-once", queue.name
        assert queue.arguments["x-overflow"] == "reject-publish", queue.name


def test_the_landing_queue_hands_the_message_to_the_exchange_and_key_it_was_published_to() -> None:
    destination = Destination("reports.x", "a.#.b")
    [landing] = delay_topology(destination, cascade=False).queues.values()

    assert landing.name == f"rabbitworker.delay.to.reports.x.a.#.b.{destination.key[:8]}"
    assert landing.arguments["x-dead-letter-exchange"] == "reports.x"
    assert landing.arguments["x-dead-letter-routing-key"] == "a.#.b"
    [(_, pattern)] = landing.bindings
    assert "#" not in pattern, "wildcards in a routing key do not widen the binding"


def test_destinations_that_join_to_the_same_text_are_kept_apart() -> None:
    assert Destination("a.b", "c").key != Destination("a", "b.c").key


def test_a_destination_too_long_for_a_readable_name_gets_its_key_instead() -> None:
    destination = Destination("x" * 200, "y" * 100)

    assert destination.landing_queue == f"rabbitworker.delay.to.{destination.key}"


@pytest.mark.parametrize("routing_key", ["odd.*.key", "kéy", "a$b"])
def test_a_routing_key_no_queue_name_may_hold_gives_the_landing_queue_the_key_instead(
    routing_key: str,
) -> None:
    destination = Destination("tasks", routing_key)

    assert destination.landing_queue == f"rabbitworker.delay.to.{destination.key}"


@pytest.mark.parametrize(("asked", "seconds"), [(0, 0), (0.001, 1), (1, 1), (1.5, 2), (59.01, 60)])
def test_a_delay_is_rounded_up_to_whole_seconds_never_down(asked: float, seconds: int) -> None:
    assert delays.delay_seconds(asked) == seconds


@pytest.mark.parametrize("asked", [-1, math.nan, math.inf, delays.MAX_DELAY + 1])
def test_a_delay_out_of_range_is_refused_with_the_limit(asked: float) -> None:
    with pytest.raises(ValueError, match="delay"):
        delays.delay_seconds(asked)


async def test_publish_task_refuses_a_delay_beyond_the_longest_tier_before_connecting() -> None:
    with pytest.raises(ValueError, match="48 days"):
        await publish_task({"task": "work"}, "later", delay=60 * 24 * 3600)


def test_a_plugin_may_not_name_a_queue_like_the_delay_queues() -> None:
    async def noop(message: dict[str, Any]) -> None: ...

    with pytest.raises(InvalidQueueConfigError, match="delay queues") as refused:
        QueueConfig(name="rabbitworker.delay.1s", routing_key="x", task_handlers={"t": noop})

    assert refused.value.field == "name"


def test_a_dead_letter_keeps_its_own_deaths_and_loses_the_cascades() -> None:
    waited = {"queue": "rabbitworker.delay.4s", "reason": "expired", "exchange": "e", "count": 1}
    landed = {"queue": "rabbitworker.delay.to.tasks.later", "reason": "expired", "count": 1}
    expired = {"queue": "later.q", "reason": "expired", "exchange": "tasks", "count": 1}
    headers = {
        "x-death": [expired, landed, waited],
        "x-first-death-queue": "rabbitworker.delay.4s",
        "x-first-death-reason": "expired",
        "x-first-death-exchange": "e",
        "x-rabbitworker-due-at": "2026-12-01T00:00:00+00:00",
    }

    cleaned = delays.without_delay_trace(headers)

    assert cleaned["x-death"] == [expired]
    assert cleaned["x-first-death-queue"] == "later.q"
    assert cleaned["x-first-death-exchange"] == "tasks"
    assert cleaned["x-rabbitworker-due-at"] == headers["x-rabbitworker-due-at"]
    assert "x-death" not in delays.without_delay_trace({"x-death": [landed, waited]})


# -- on the broker -------------------------------------------------------------------------


async def publish_delayed(
    delays_by_id: dict[int, float], confirmed: dict[int, float] | None = None
) -> dict[int, float]:
    """Publish one probe message per id with its delay; the time each call started (and,
    into ``confirmed``, the time each returned)."""
    sent: dict[int, float] = {}
    try:
        for message_id, delay in delays_by_id.items():
            sent[message_id] = time.monotonic()
            await publish_task(
                {"task": "work", "payload": {"id": message_id}},
                QUEUE["routing_key"],
                message_id=f"m-{message_id}",
                delay=delay,
            )
            if confirmed is not None:
                confirmed[message_id] = time.monotonic()
    finally:
        await close_publishers()
    return sent


async def delay_queue_depths(amqp: AmqpClient) -> dict[str, int]:
    names = [delays.tier_name(tier) for tier in range(delays.TIERS)]
    names.append(Destination("tasks", QUEUE["routing_key"]).landing_queue)
    return {name: await amqp.ready(name) for name in names}


@pytest.mark.broker
async def test_each_message_arrives_once_and_never_sooner_than_its_delay(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    host = start_host([{**QUEUE, "prefetch_count": 20}])
    asked = {0: 1, 1: 1.2, 2: 2, 3: 3, 4: 4.5, 5: 5, 6: 6, 7: 7, 8: 0.3, 9: 2.5, 10: 3.7, 11: 6.9}

    confirmed: dict[int, float] = {}
    sent = await publish_delayed(asked, confirmed)
    starts = await host.wait_for_events("start", len(asked), within=30)
    await host.wait_for_events("end", len(asked))
    await asyncio.sleep(1.5)  # anything duplicated would arrive within the tier resolution

    waited = {e["id"]: e["t"] - sent[e["id"]] for e in starts}
    for message_id in sorted(asked):
        print(f"delay {asked[message_id]:>4} s: handled after {waited[message_id]:.3f} s")
    assert Counter(e["id"] for e in host.events("start")) == Counter(set(asked)), "each once"
    early = {i: round(waited[i], 3) for i in asked if waited[i] < asked[i]}
    assert early == {}, "never sooner than asked"
    # Late counts from the confirm: the first call also declares the cascade, which can take
    # seconds on a loaded machine before anything waits in it.
    stored = {e["id"]: e["t"] - confirmed[e["id"]] for e in starts}
    late = {i: round(stored[i], 3) for i in asked if stored[i] > math.ceil(asked[i]) + 2}
    assert late == {}, "within the tier resolution (1 s), plus a margin for a loaded machine"
    assert await amqp.ready(QUEUE["name"]) == 0
    assert set((await delay_queue_depths(amqp)).values()) == {0}, "nothing left waiting"


@pytest.mark.broker
async def test_messages_come_out_in_the_order_they_fall_due(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    host = start_host([{**QUEUE, "prefetch_count": 1}])
    # Published last-due first: 6 s, 5 s, ... 1 s.
    await publish_delayed({i: 6 - i for i in range(6)})

    ends = await host.wait_for_events("end", 6, within=30)

    assert [e["id"] for e in ends] == [5, 4, 3, 2, 1, 0]


@pytest.mark.broker
async def test_a_waiting_message_is_held_by_the_broker_not_by_any_host(
    start_host: Callable[..., HostProcess], amqp_url: str, amqp: AmqpClient, broker: Broker
) -> None:
    await declare_like_the_host(amqp_url, [QUEUE])
    sent = await publish_delayed({1: 5})  # 5 s = the 4 s tier, then the 1 s tier

    depths = await delay_queue_depths(amqp)
    unacked = sum(q.get("messages_unacknowledged", 0) for q in broker.queues().values())

    assert {name: n for name, n in depths.items() if n} == {"rabbitworker.delay.4s": 1}
    assert unacked == 0, "nothing is held unacknowledged while it waits"
    assert await amqp.ready(QUEUE["name"]) == 0, "not there yet"
    # No host was running while it waited: one started now gets it once it is due.
    host = start_host([QUEUE])
    [start] = await host.wait_for_events("start", 1, within=15)
    assert start["t"] - sent[1] >= 5


@pytest.mark.broker
async def test_a_waiting_message_survives_a_host_killed_while_it_waits(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    first = start_host([QUEUE])
    sent = await publish_delayed(dict.fromkeys(range(10), 3))
    assert await first.async_stop(signal.SIGKILL) != 0

    second = start_host([QUEUE])
    starts = await second.wait_for_events("start", 10, within=20)
    await asyncio.sleep(1.5)

    assert Counter(e["id"] for e in second.events("start")) == Counter(range(10))
    assert min(e["t"] - sent[e["id"]] for e in starts) >= 3
    assert await amqp.ready(QUEUE["name"]) == 0


@pytest.mark.broker
async def test_the_delay_queues_appear_only_once_something_is_delayed(
    start_host: Callable[..., HostProcess], broker: Broker
) -> None:
    host = start_host([QUEUE])
    before = [name for name in broker.queues() if name.startswith(delays.PREFIX)]
    await publish_delayed({1: 1})
    await host.wait_for_events("end", 1)
    after = broker.queues()

    assert before == [], "a host declares nothing for delays by itself"
    cascade = {name: q for name, q in after.items() if name.startswith(delays.PREFIX)}
    assert len(cascade) == delays.TIERS + 1
    assert {q["arguments"]["x-queue-type"] for q in cascade.values()} == {"quorum"}


@pytest.mark.broker
async def test_a_cascade_deleted_under_a_connected_publisher_is_declared_again(
    start_host: Callable[..., HostProcess], broker: Broker
) -> None:
    host = start_host([QUEUE])
    try:
        await publish_task({"task": "work", "payload": {"id": 1}}, "later", delay=1)
        await host.wait_for_events("end", 1)
        for tier in range(delays.TIERS):
            delete_queue(broker, delays.tier_name(tier))
        broker_delete_exchange(broker, delays.ENTRY_EXCHANGE)
        await publish_task({"task": "work", "payload": {"id": 2}}, "later", delay=1)
    finally:
        await close_publishers()

    ends = await host.wait_for_events("end", 2, within=15)
    assert sorted(e["id"] for e in ends) == [1, 2]


def broker_delete_exchange(broker: Broker, name: str) -> None:
    httpx.delete(
        f"{broker.api}/exchanges/{quote(broker.vhost, safe='')}/{quote(name, safe='')}",
        auth=AUTH,
        timeout=10,
    ).raise_for_status()


@pytest.mark.broker
async def test_a_delayed_message_to_an_exchange_that_does_not_exist_is_refused_at_once(
    amqp_url: str, broker: Broker
) -> None:
    try:
        with pytest.raises(ExchangeNotFoundError, match="nowhere"):
            await publish_task({"task": "work"}, "later", exchange_name="nowhere", delay=5)
    finally:
        await close_publishers()

    assert [name for name in broker.queues() if delays.is_delay_queue(name)] == [], (
        "nothing stored, nothing declared"
    )


@pytest.mark.broker
async def test_a_due_message_that_no_queue_is_bound_for_waits_in_its_landing_queue(
    amqp_url: str, amqp: AmqpClient, broker: Broker
) -> None:
    await declare_like_the_host(amqp_url, [QUEUE])
    try:
        await publish_task({"task": "work"}, "nobody", delay=1)
    finally:
        await close_publishers()

    landing = Destination("tasks", "nobody").landing_queue
    held = await async_wait_for(
        lambda: broker.queue(landing).get("messages_dlx"), within=15, message="the held message"
    )

    assert held == 1, "kept (and retried by the broker), not dropped"
    waiting = [await amqp.ready(delays.tier_name(tier)) for tier in range(delays.TIERS)]
    assert sum(waiting) == 0


@pytest.mark.broker
async def test_a_delayed_message_that_fails_is_dead_lettered_naming_its_queue_not_the_tiers(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    start_host([QUEUE])
    try:
        await publish_task({"task": "fail", "payload": {"id": 1}}, "later", delay=2)
    finally:
        await close_publishers()

    await async_wait_for(lambda: amqp.ready("tasks.dlq"), within=15, message="the dead letter")
    [dead] = await amqp.take_all("tasks.dlq")
    headers = dead.headers or {}

    assert headers["x-first-death-queue"] == QUEUE["name"]
    assert headers["x-rabbitworker-queue"] == QUEUE["name"]
    assert not [d for d in headers.get("x-death", []) if delays.is_delay_queue(d["queue"])]


@pytest.mark.broker
def test_publish_task_sync_delays_too(
    start_host: Callable[..., HostProcess], amqp_url: str
) -> None:
    host = start_host([QUEUE])
    try:
        sent = time.monotonic()
        publish_task_sync({"task": "work", "payload": {"id": 7}}, "later", delay=2)
    finally:
        close_sync_publisher()

    [start] = asyncio.run(host.wait_for_events("start", 1, within=15))
    assert start["id"] == 7
    assert start["t"] - sent >= 2


@pytest.mark.broker
def test_the_cli_publishes_with_a_delay(
    start_host: Callable[..., HostProcess],
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
    amqp_url: str,
) -> None:
    host = start_host([QUEUE])
    sent = time.monotonic()
    result = run_cli(
        "publish",
        "work",
        "-k",
        "later",
        "--payload",
        '{"id": 3}',
        "--delay",
        "2",
        "--json",
        queues=[QUEUE],
        amqp_url=amqp_url,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["delay"] == 2
    [start] = asyncio.run(host.wait_for_events("start", 1, within=15))
    assert start["id"] == 3
    assert start["t"] - sent >= 2


def test_the_cli_refuses_a_delay_beyond_the_longest_tier(
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = run_cli("publish", "work", "-k", "later", "--delay", str(delays.MAX_DELAY + 1))

    assert result.returncode == 2
    assert "--delay" in result.stderr


@pytest.mark.broker
async def test_a_user_who_may_not_declare_the_delay_queues_is_told_so_at_once(
    amqp_url: str, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    await declare_like_the_host(amqp_url, [QUEUE])
    url = broker.create_user("producer", "s3cret-pw")
    response = await asyncio.to_thread(
        httpx.put,
        f"{broker.api}/permissions/{quote(broker.vhost, safe='')}/producer",
        auth=AUTH,
        timeout=10,
        json={"configure": "^$", "write": "^tasks$", "read": "^tasks$"},
    )
    response.raise_for_status()
    monkeypatch.setenv("RABBITWORKER_AMQP_URL", url)

    began = time.monotonic()
    try:
        with pytest.raises(PublishRefusedError, match="permissions") as refused:
            await publish_task({"task": "work"}, "later", delay=5)
    finally:
        await close_publishers()

    assert time.monotonic() - began < 5, "not retried until the publish deadline"
    assert "s3cret-pw" not in str(refused.value)


@pytest.mark.broker
async def test_a_delay_queue_declared_otherwise_is_a_publish_error_that_says_what_to_do(
    amqp_url: str, amqp: AmqpClient
) -> None:
    await declare_like_the_host(amqp_url, [QUEUE])
    await amqp.channel.declare_queue(delays.tier_name(0), durable=True)  # classic, no TTL

    try:
        with pytest.raises(PublishNotSentError, match="delete them") as refused:
            await publish_task({"task": "work"}, "later", delay=1)
    finally:
        await close_publishers()

    assert "rabbitworker.delay.1s" in str(refused.value)
    assert "QueueConfig" not in str(refused.value)
