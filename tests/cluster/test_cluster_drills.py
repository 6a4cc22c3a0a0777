"""Cluster drills: real host processes on a quorum work queue of the three-node cluster,
a node (or a host) lost mid-stream, and an exact count at the end.

Each drill prints one ``DRILL ...`` line (``pytest -s`` shows it): published, processed,
duplicates, lost, left, DLQ and the time from the fault to processing resuming. The
results of a run are kept in DRILLS.md beside this file.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aio_pika
import pytest
from brokertools import AmqpClient
from clustertools import RabbitCluster
from drillkit import (
    FAST_FAILOVER,
    PUBLISH_TASK_CONNECTION,
    count,
    inject,
    node_of,
    other_node,
    resume_after,
    stop_the_publishers_node_mid_stream,
    wait_processed,
)
from faultkit import (
    DLQ,
    QUEUE,
    ROUTING_KEY,
    FaultRig,
    exit_code,
    fault_queue,
    poll,
    publish_tasks,
)

import rabbitworker

pytestmark = pytest.mark.cluster

LOST_CONNECTION = "lost the broker connection"


@pytest.fixture
def rig(rabbit_cluster: RabbitCluster, cluster_vhost: str, tmp_path: Path) -> Iterator[FaultRig]:
    """Hosts running ``fault_plugin`` on this test's vhost, given every node by default
    (a host's ``RABBITWORKER_AMQP_URL`` may be overridden); all killed afterwards."""
    rig = FaultRig(rabbit_cluster.amqp_urls(cluster_vhost), tmp_path)
    try:
        yield rig
    finally:
        rig.kill_all()


def url_of(cluster: RabbitCluster, vhost: str, *nodes: str) -> str:
    """RABBITWORKER_AMQP_URL naming just ``nodes``."""
    return ";".join(cluster.amqp_url(node, vhost) for node in nodes)


def work_queue(prefetch: int, **overrides: object) -> list[dict[str, object]]:
    return [fault_queue(queue_type="quorum", prefetch_count=prefetch, **overrides)]


async def declare_from_node_1(
    rig: FaultRig, cluster: RabbitCluster, vhost: str, queues: list[dict[str, object]]
) -> None:
    """Let a host declare the topology through node 1 and stop: every queue's leader is
    then node 1 (quorum queues are placed client-local), wherever the drill's hosts go."""
    declarer = await rig.start(
        queues, RABBITWORKER_AMQP_URL=cluster.amqp_url(1, vhost), **FAST_FAILOVER
    )
    assert await declarer.async_stop() == 0, declarer.log[-3000:]


# -- 1 ---------------------------------------------------------------------------------------


async def test_drill_1_the_hosts_node_stops_and_it_fails_over_to_another_node(
    rig: FaultRig, rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    total, prefetch = 1000, 10
    host = await rig.start(work_queue(prefetch), **FAST_FAILOVER)
    node = await node_of(rabbit_cluster, cluster_vhost, host.process.pid)
    ids = [f"d1-{i}" for i in range(total)]
    client_node = other_node(rabbit_cluster, node)
    async with AmqpClient(rabbit_cluster.amqp_url(client_node, cluster_vhost)) as amqp:
        published = await publish_tasks(amqp, "work", ids, sleep=0.1)
        await rig.wait_events("end", 300, alive=host, within=60)

        fault = await inject(
            lambda: rabbit_cluster.stop_node(node), watch=[(host, LOST_CONNECTION)]
        )
        await wait_processed(rig, ids, within=120, alive=[host])
        moved_to = await node_of(rabbit_cluster, cluster_vhost, host.process.pid, not_on=node)
        running = await asyncio.to_thread(rabbit_cluster.running_nodes)
        resume, stall = resume_after(rig, fault.began)
        assert await host.async_stop() == 0, host.log[-3000:]
        result = await count(rig, amqp, published)

    lost_seen = fault.seen.get(f"{host.process.pid}:{LOST_CONNECTION}")
    # The failover alone: from the host logging the lost connection to its next start.
    after_loss = [e["t"] for e in rig.events("start") if lost_seen and e["t"] >= lost_seen]
    failover = min(after_loss) - lost_seen if lost_seen and after_loss else None
    print(
        "\n"
        + result.line(
            "1 (host's node stops)",
            resume,
            stall=f"{stall:.2f} s",
            failover=f"{failover:.2f} s" if failover is not None else "n/a",
            node=f"{node} -> {moved_to}",
            stop_app=f"{fault.returned - fault.began:.2f} s",
            connection_lost_after=(
                f"{lost_seen - fault.began:.2f} s" if lost_seen is not None else "never"
            ),
        )
    )
    assert node not in running, "the stopped node came back before the stream was done"
    assert moved_to != node
    assert not result.lost, sorted(result.lost)[:10]
    assert result.processed == set(published)
    assert not result.left
    assert not result.dead
    # A node taking in-flight messages down with it may have them processed twice (the
    # handler completed, the ack never arrived): at most one prefetch window.
    assert len(result.duplicates) <= prefetch
    # The pause, not ``resume``: with no real stall, the longest pause is any hiccup of the
    # stream (0.13 s when stop_app ended, 5.6 s in), and ``resume`` its place in the stream.
    assert stall < 15, f"processing stopped for {stall:.1f} s after the node stopped"


# -- 2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault_kind", ["stop", "kill"])
async def test_drill_2_the_queue_leader_is_lost_and_nothing_is(
    rig: FaultRig, rabbit_cluster: RabbitCluster, cluster_vhost: str, fault_kind: str
) -> None:
    total, prefetch = 1000, 10
    queues = work_queue(prefetch)
    await declare_from_node_1(rig, rabbit_cluster, cluster_vhost, queues)
    leader = rabbit_cluster.queue_leader(cluster_vhost, QUEUE)
    others = [name for name in rabbit_cluster.node_names() if name != leader]
    # The host is given the other two nodes: the leader's loss is not its connection's.
    host = await rig.start(
        queues,
        RABBITWORKER_AMQP_URL=url_of(rabbit_cluster, cluster_vhost, *others),
        **FAST_FAILOVER,
    )
    node = await node_of(rabbit_cluster, cluster_vhost, host.process.pid)
    ids = [f"d2-{i}" for i in range(total)]
    async with AmqpClient(rabbit_cluster.amqp_url(others[0], cluster_vhost)) as amqp:
        published = await publish_tasks(amqp, "work", ids, sleep=0.1)
        await rig.wait_events("end", 300, alive=host, within=60)

        lose = rabbit_cluster.stop_node if fault_kind == "stop" else rabbit_cluster.kill_node
        fault = await inject(lambda: lose(leader), watch=[(host, LOST_CONNECTION)])
        await wait_processed(rig, ids, within=120, alive=[host])
        new_leader = rabbit_cluster.queue_leader(cluster_vhost, QUEUE)
        resume, stall = resume_after(rig, fault.began)
        assert await host.async_stop() == 0, host.log[-3000:]
        result = await count(rig, amqp, published)

    print(
        "\n"
        + result.line(
            f"2 (queue leader {fault_kind})",
            resume,
            stall=f"{stall:.2f} s",
            leader=f"{leader} -> {new_leader}",
            host_on=node,
            host_lost_connection=f"{host.process.pid}:{LOST_CONNECTION}" in fault.seen,
            fault_took=f"{fault.returned - fault.began:.2f} s",
        )
    )
    assert new_leader != leader
    assert not result.lost, sorted(result.lost)[:10]
    assert result.processed == set(published)
    assert not result.left
    assert not result.dead
    assert len(result.duplicates) <= prefetch
    assert stall < 15, f"processing stopped for {stall:.1f} s after the leader was lost"


# -- 3 ---------------------------------------------------------------------------------------


async def test_drill_3_of_two_hosts_on_two_nodes_one_is_killed_and_the_other_does_the_rest(
    rig: FaultRig, rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    total, prefetch = 2000, 20
    queues = work_queue(prefetch)
    first, second, third = rabbit_cluster.node_names()
    victim = await rig.start(
        queues,
        RABBITWORKER_AMQP_URL=rabbit_cluster.amqp_url(first, cluster_vhost),
        **FAST_FAILOVER,
    )
    survivor = await rig.start(
        queues,
        RABBITWORKER_AMQP_URL=rabbit_cluster.amqp_url(second, cluster_vhost),
        **FAST_FAILOVER,
    )
    assert await node_of(rabbit_cluster, cluster_vhost, victim.process.pid) == first
    assert await node_of(rabbit_cluster, cluster_vhost, survivor.process.pid) == second
    ids = [f"d3-{i}" for i in range(total)]
    async with AmqpClient(rabbit_cluster.amqp_url(third, cluster_vhost)) as amqp:
        published = await publish_tasks(amqp, "work", ids, sleep=0.1)
        await rig.wait_events("end", 600, alive=survivor, within=60)
        ended_by = {
            pid: {e["id"] for e in rig.events("end") if e["pid"] == pid}
            for pid in (victim.process.pid, survivor.process.pid)
        }
        assert all(ended_by.values()), "both hosts take part before the kill"

        killed_at = time.monotonic()
        victim.process.kill()
        victim.process.wait(timeout=10)
        # Dead by now, not necessarily at ``killed_at``: the victim may complete a handler
        # between that reading and the signal (one ends every few ms at this rate).
        dead_at = time.monotonic()
        await wait_processed(rig, ids, within=120, alive=[survivor])
        assert await survivor.async_stop() == 0, survivor.log[-3000:]
        result = await count(rig, amqp, published)

    pid = victim.process.pid
    started_by_victim = {e["id"] for e in rig.events("start") if e["pid"] == pid}
    ended_by_victim = {e["id"] for e in rig.events("end") if e["pid"] == pid}
    orphans = (started_by_victim - ended_by_victim) | result.duplicates
    taken_over = [
        e["t"]
        for e in rig.events("start")
        if e["pid"] == survivor.process.pid and e["id"] in orphans and e["t"] >= killed_at
    ]
    resume = min(taken_over) - killed_at if taken_over else None
    print(
        "\n"
        + result.line(
            "3 (one of two hosts killed -9)",
            resume,
            victim_in_flight=len(orphans),
            unfinished_by_victim=len(started_by_victim - ended_by_victim),
            by_victim=len(ended_by_victim),
            by_survivor=len({e["id"] for e in rig.events("end") if e["pid"] != pid}),
        )
    )
    assert not result.lost, sorted(result.lost)[:10]
    assert result.processed == set(published)
    assert not result.left
    assert not result.dead
    # Only what the killed host held unacknowledged is done twice: ended there (the ack
    # died with it) and again by the survivor; never more than its prefetch.
    assert result.duplicates <= ended_by_victim
    assert len(orphans) <= prefetch
    assert not [e for e in rig.events("end") if e["pid"] == pid and e["t"] > dead_at]


# -- 4 ---------------------------------------------------------------------------------------


async def _ready(url: str, queue: str) -> int | None:
    """Ready messages in ``queue`` on a throwaway connection (a queue whose node is down
    closes the channel that asks), or None if it cannot be asked right now."""
    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception:
        return None
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    except Exception:
        return None
    finally:
        await connection.close()


async def test_drill_4_the_dlqs_node_stops_while_messages_fail_and_retry(
    rig: FaultRig, rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    failing, working, prefetch = 300, 300, 10
    queues = work_queue(prefetch, max_retries=1, retry_delays=[0.5])
    retry_queue = f"{QUEUE}.retry.500ms"
    await declare_from_node_1(rig, rabbit_cluster, cluster_vhost, queues)
    dlq_leader = rabbit_cluster.queue_leader(cluster_vhost, DLQ)
    dlq_info = rabbit_cluster.queue_info(cluster_vhost, DLQ)
    dlq_kind = f"{dlq_info.get('type')}, {dlq_info.get('arguments')}"
    others = [name for name in rabbit_cluster.node_names() if name != dlq_leader]
    host = await rig.start(
        queues,
        RABBITWORKER_AMQP_URL=url_of(rabbit_cluster, cluster_vhost, *others),
        **FAST_FAILOVER,
    )
    node = await node_of(rabbit_cluster, cluster_vhost, host.process.pid)
    client_url = rabbit_cluster.amqp_url(others[0], cluster_vhost)
    fail_ids = [f"d4-fail-{i}" for i in range(failing)]
    work_ids = [f"d4-work-{i}" for i in range(working)]
    async with AmqpClient(client_url) as amqp:
        published = []
        for fail_id, work_id in zip(fail_ids, work_ids, strict=True):
            published += await publish_tasks(amqp, "fail", [fail_id])
            published += await publish_tasks(amqp, "work", [work_id], sleep=0.05)

    async def dead_lettered() -> int:
        return await _ready(client_url, DLQ) or 0

    await poll(lambda: _at_least(dead_lettered, 30), within=60, message="30 dead letters")
    fault = await inject(
        lambda: rabbit_cluster.stop_node(dlq_leader), watch=[(host, LOST_CONNECTION)]
    )
    finished_while_down = True
    try:
        await wait_processed(rig, work_ids, within=90, alive=[host])
        await poll(
            lambda: _at_least(dead_lettered, failing),
            within=60,
            interval=0.5,
            message=f"{failing} dead letters",
        )
    except AssertionError as error:
        finished_while_down = False
        print(f"\nnot finished while {dlq_leader} was down: {str(error)[:2000]}")
    resume, stall = resume_after(rig, fault.began)
    assert await host.async_stop() == 0, host.log[-3000:]
    # Count on the whole cluster again: a queue that lived only on the stopped node shows
    # what it holds once that node is back.
    await asyncio.to_thread(rabbit_cluster.restore)
    async with AmqpClient(client_url) as amqp:
        result = await count(rig, amqp, published, queues=(QUEUE, retry_queue))

    dead_ids = set(result.dead)
    print(
        "\n"
        + result.line(
            "4 (DLQ leader stops during dead-lettering)",
            resume,
            stall=f"{stall:.2f} s",
            dlq=f"{dlq_kind} led by {dlq_leader}",
            host_on=node,
            dead_lettered_twice=sum(1 for n in result.dead.values() if n > 1),
            failing_in_dlq=len(dead_ids & set(fail_ids)),
            finished_while_down=finished_while_down,
        )
    )
    warnings = [line for line in host.log.splitlines() if "WARNING" in line or "ERROR" in line]
    if warnings:
        print("host warnings (first 15):\n" + "\n".join(warnings[:15]))
    assert not result.lost, sorted(result.lost)[:10]
    assert result.processed == set(work_ids), "every working message processed"
    assert dead_ids == set(fail_ids), "every failing message in the DLQ"
    # A copy whose confirm was outstanding when the DLQ's leader stopped may have been
    # stored before it, and is published again (at least once, never zero times): at most
    # one extra copy per message in flight, and only then.
    extra = sum(n - 1 for n in result.dead.values())
    assert extra <= prefetch, f"{extra} dead letters stored twice: more than were in flight"
    assert not result.duplicates
    assert not result.left
    assert finished_while_down


async def _at_least(counter: Callable[[], Awaitable[int]], wanted: int) -> bool:
    return await counter() >= wanted


# -- 5 ---------------------------------------------------------------------------------------


async def test_drill_5_the_publishers_node_stops_mid_stream(
    rig: FaultRig,
    rabbit_cluster: RabbitCluster,
    cluster_vhost: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    total, prefetch = 1000, 10
    monkeypatch.setenv("RABBITWORKER_AMQP_URL", rabbit_cluster.amqp_urls(cluster_vhost))
    monkeypatch.setenv("RABBITWORKER_PUBLISH_TIMEOUT", "10")
    monkeypatch.setenv("RABBITWORKER_HEARTBEAT", "5")
    host = await rig.start(work_queue(prefetch), **FAST_FAILOVER)
    host_node = await node_of(rabbit_cluster, cluster_vhost, host.process.pid)
    ids = [f"d5-{i}" for i in range(total)]
    calls: list[tuple[float, float]] = []
    errors: list[tuple[str, BaseException]] = []

    async def publish(index: int) -> None:
        message_id = ids[index]
        began = time.monotonic()
        try:
            await rabbitworker.publish_task(
                {"task": "work", "payload": {}}, ROUTING_KEY, message_id=message_id
            )
        except Exception as error:
            errors.append((message_id, error))
        calls.append((began, time.monotonic()))

    try:
        pub_node, fault = await stop_the_publishers_node_mid_stream(
            rabbit_cluster, cluster_vhost, publish, total, hold_at=300
        )
        published_after = sum(1 for began, _ in calls if began >= fault.began)
        moved_to = await node_of(
            rabbit_cluster,
            cluster_vhost,
            os.getpid(),
            prefix=PUBLISH_TASK_CONNECTION,
            not_on=pub_node,
        )
    finally:
        await rabbitworker.close_publishers()
    published = [message_id for message_id in ids if message_id not in dict(errors)]
    await wait_processed(rig, published, within=120, alive=[host])
    assert await host.async_stop() == 0, host.log[-3000:]
    async with AmqpClient(
        rabbit_cluster.amqp_url(other_node(rabbit_cluster, pub_node), cluster_vhost)
    ) as amqp:
        result = await count(rig, amqp, published)

    after = [(began, ended) for began, ended in calls if ended >= fault.began]
    longest_began, longest_ended = max(after, key=lambda call: call[1] - call[0])
    resume = longest_ended - fault.began
    # Two copies stored (a confirm lost, the publish sent again): each copy delivered
    # fresh, neither marked redelivered.
    fresh = [e["id"] for e in rig.events("start") if not e["redelivered"]]
    copies = {message_id for message_id, n in Counter(fresh).items() if n > 1}
    print(
        "\n"
        + result.line(
            "5 (publisher's node stops)",
            resume,
            longest_publish=f"{longest_ended - longest_began:.2f} s",
            publisher=f"{pub_node} -> {moved_to}",
            host_on=host_node,
            publish_errors=len(errors),
            published_after_fault=published_after,
            stored_twice=len(copies),
        )
    )
    for message_id, error in errors[:5]:
        print(f"  {message_id}: {type(error).__name__}: {error}")
    assert not errors, f"{len(errors)} publish_task calls raised with two nodes up"
    assert published_after > 0, "the stop came after the stream"
    assert not result.lost, sorted(result.lost)[:10]
    assert result.processed == set(ids)
    assert not result.left
    assert not result.dead
    # Duplicates only from a lost confirm (two stored copies), or, if the host was on the
    # stopped node too, from its own in-flight window.
    allowed = copies | (set(ids) if host_node == pub_node else set())
    assert result.duplicates <= allowed


# -- 6 ---------------------------------------------------------------------------------------


async def test_drill_6_tls_a_host_with_a_client_certificate_works_one_without_fails_clearly(
    rig: FaultRig, rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    total = 200
    queues = work_queue(10)
    tls_node = rabbit_cluster.node(rabbit_cluster.tls_node).name
    host = await rig.start(
        queues, RABBITWORKER_AMQP_URL=rabbit_cluster.amqps_url(cluster_vhost), **FAST_FAILOVER
    )
    assert await node_of(rabbit_cluster, cluster_vhost, host.process.pid) == tls_node
    ids = [f"d6-{i}" for i in range(total)]
    async with AmqpClient(rabbit_cluster.amqp_url(tls_node, cluster_vhost)) as amqp:
        published = await publish_tasks(amqp, "work", ids)
        await wait_processed(rig, ids, within=60, alive=[host])
        assert await host.async_stop() == 0, host.log[-3000:]
        result = await count(rig, amqp, published)

        without_cert = rabbit_cluster.amqps_url(cluster_vhost, client_cert=False)
        refused = rig.spawn(queues, RABBITWORKER_AMQP_URL=without_cert, **FAST_FAILOVER)
        began = time.monotonic()
        code = await exit_code(refused, 60)
        took = time.monotonic() - began

    output = refused.log
    errors = [line for line in output.splitlines() if "cannot connect" in line or "ERROR" in line]
    print("\n" + result.line("6 (TLS)", None, refused_exit=code, refused_after=f"{took:.1f} s"))
    print("  without a client certificate: " + (errors[0] if errors else output[-1500:]))
    assert not result.lost
    assert result.processed == set(published)
    assert not result.left
    assert not result.dead
    assert not result.duplicates
    assert code != 0
    assert took < 30
    assert f"localhost:{rabbit_cluster.tls_port}" in output, output[-3000:]
    assert ":guest@" not in output, "the password is masked"
    assert "Traceback" not in output, output[-3000:]
    assert "if it requires client certificates, add certfile=" in output, output[-3000:]


# -- 7 ---------------------------------------------------------------------------------------


async def test_drill_7_a_classic_queues_node_stops_the_host_backs_off_and_resumes_after(
    rig: FaultRig, rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    """A classic work queue lives on one node: while it is down no node can set the host
    up again (404 "home node down"). The host must wait between rounds of attempts, not
    reconnect in a tight loop, and resume once the node is back."""
    total, prefetch, outage = 300, 10, 10.0
    queues = [fault_queue(queue_type="classic", prefetch_count=prefetch)]
    await declare_from_node_1(rig, rabbit_cluster, cluster_vhost, queues)
    home = rabbit_cluster.queue_leader(cluster_vhost, QUEUE)
    host = await rig.start(queues, **FAST_FAILOVER, RABBITWORKER_RECONNECT_INTERVAL_MAX="2")
    ids = [f"d7-{i}" for i in range(total)]
    # The first 100 run at once; the rest wait for a gate opened once the node is down, so
    # work is surely left for after it comes back (300 plain ones could all be done before
    # a slow stop_app took the host's connection).
    async with AmqpClient(rabbit_cluster.amqp_url(home, cluster_vhost)) as amqp:
        published = await publish_tasks(amqp, "work", ids[:100], sleep=0.1)
        published += await publish_tasks(amqp, "work", ids[100:], sleep=0.1, gate="down")
    await rig.wait_events("end", 50, alive=host, within=60)

    fault = await inject(lambda: rabbit_cluster.stop_node(home))
    rig.open_gate("down")
    await asyncio.sleep(outage)
    attempts = host.log.count("lost while setting up")
    window = time.monotonic() - fault.began
    await asyncio.to_thread(rabbit_cluster.start_node, home)
    back = time.monotonic()
    await wait_processed(rig, ids, within=120, alive=[host])
    resumed = min(e["t"] for e in rig.events("start") if e["t"] >= back) - back
    assert await host.async_stop() == 0, host.log[-3000:]
    async with AmqpClient(rabbit_cluster.amqp_url(home, cluster_vhost)) as amqp:
        result = await count(rig, amqp, published)

    print(
        "\n"
        + result.line(
            "7 (classic queue's node down 10 s)",
            resumed,
            set_up_attempts=f"{attempts} in {window:.1f} s",
            down_for=f"{back - fault.began:.1f} s",
        )
    )
    assert not result.lost, sorted(result.lost)[:10]
    assert result.processed == set(published)
    assert not result.left
    assert not result.dead
    assert len(result.duplicates) <= prefetch
    # Two nodes answer, neither can set up: a round of three attempts (one per node of the
    # list), then a wait of 0.2, 0.4, 0.8, 1.6, then 2 s between rounds.
    rounds = 5 + window / 2
    assert attempts <= 3 * rounds, f"{attempts} set-up attempts in {window:.0f} s: a tight loop"
    assert resumed < 10, f"processing resumed {resumed:.1f} s after the node came back"
