"""The cluster fixture does what the cluster tests rely on: three nodes that are one
cluster, quorum queues replicated across them that survive their leader's loss, the TLS
listener with client certificates, and nodes brought back after a test's drill."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel
from brokertools import async_wait_for
from clustertools import RabbitCluster
from pamqp.common import FieldTable

pytestmark = pytest.mark.cluster

QUEUE = "smoke.qq"
QUORUM: FieldTable = {"x-queue-type": "quorum"}


@asynccontextmanager
async def channel_on(url: str) -> AsyncIterator[AbstractChannel]:
    """A channel with publisher confirms on a plain (not robust) connection to ``url``."""
    connection = await aio_pika.connect(url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def publish(channel: AbstractChannel, *bodies: bytes) -> None:
    """Publish persistently to QUEUE through the default exchange, each body confirmed."""
    for body in bodies:
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=QUEUE,
        )


async def take_all(channel: AbstractChannel) -> list[bytes]:
    queue = await channel.declare_queue(QUEUE, passive=True)
    bodies = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        bodies.append(message.body)
    return bodies


def test_the_three_nodes_are_one_cluster(rabbit_cluster: RabbitCluster) -> None:
    prefix = rabbit_cluster.prefix  # "rw" unless another session holds those names
    names = {f"{prefix}1@localhost", f"{prefix}2@localhost", f"{prefix}3@localhost"}
    assert len(rabbit_cluster.nodes) == 3
    for node in rabbit_cluster.nodes:
        assert rabbit_cluster.running_nodes(via=node.index) == names


async def test_a_quorum_queue_declared_on_node_1_has_three_members_and_serves_node_2(
    rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    async with channel_on(rabbit_cluster.amqp_url(1, cluster_vhost)) as channel:
        await channel.declare_queue(QUEUE, durable=True, arguments=QUORUM)
        await publish(channel, b"hello from node 1")

    info = rabbit_cluster.queue_info(cluster_vhost, QUEUE)
    assert sorted(info["members"]) == sorted(rabbit_cluster.node_names())
    async with channel_on(rabbit_cluster.amqp_url(2, cluster_vhost)) as channel:
        assert await take_all(channel) == [b"hello from node 1"]


async def test_when_its_leader_stops_a_quorum_queue_gets_another_leader_and_still_serves(
    rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    async with channel_on(rabbit_cluster.amqp_url(1, cluster_vhost)) as channel:
        await channel.declare_queue(QUEUE, durable=True, arguments=QUORUM)
        await publish(channel, b"m0", b"m1", b"m2")
    leader = rabbit_cluster.queue_leader(cluster_vhost, QUEUE)

    await asyncio.to_thread(rabbit_cluster.stop_node, leader)

    survivors = sorted(set(rabbit_cluster.node_names()) - {leader})
    assert len(survivors) == 2

    def new_leader() -> str | None:
        info = rabbit_cluster.queue_info(cluster_vhost, QUEUE)
        elected = info.get("leader") in survivors and sorted(info["online"]) == survivors
        return str(info["leader"]) if elected else None

    elected = await async_wait_for(
        lambda: asyncio.to_thread(new_leader), within=30, interval=0.25, message="a new leader"
    )
    assert elected != leader
    other = next(name for name in survivors if name != elected)
    async with channel_on(rabbit_cluster.amqp_url(other, cluster_vhost)) as channel:
        await publish(channel, b"m3")
        assert await take_all(channel) == [b"m0", b"m1", b"m2", b"m3"]


async def test_the_tls_node_accepts_a_client_with_a_certificate(
    rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    async with channel_on(rabbit_cluster.amqps_url(cluster_vhost)) as channel:
        await channel.declare_queue(QUEUE, durable=True, arguments=QUORUM)
        await publish(channel, b"over tls")
        assert await take_all(channel) == [b"over tls"]


async def test_the_tls_node_refuses_a_client_without_a_certificate(
    rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    with pytest.raises(aiormq.exceptions.AMQPConnectionError):
        await aio_pika.connect(rabbit_cluster.amqps_url(cluster_vhost, client_cert=False))


def test_the_tls_node_refuses_it_for_want_of_a_certificate(rabbit_cluster: RabbitCluster) -> None:
    # aiormq reports either the server's alert or, when its AMQP header crossed the alert on
    # the wire, only a reset: read the alert on a bare TLS socket that never writes.
    assert rabbit_cluster.tls is not None
    context = ssl.create_default_context(cafile=rabbit_cluster.tls.ca)
    with (
        socket.create_connection(("localhost", rabbit_cluster.tls_port), timeout=10) as raw,
        pytest.raises(ssl.SSLError) as refused,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.recv(1)
    assert refused.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_restore_brings_back_a_stopped_node_and_a_killed_one(rabbit_cluster: RabbitCluster) -> None:
    first, stopped, killed = rabbit_cluster.node_names()
    rabbit_cluster.stop_node(stopped)
    rabbit_cluster.kill_node(killed)
    assert rabbit_cluster.running_nodes() == {first}

    assert sorted(rabbit_cluster.restore()) == [stopped, killed]

    assert rabbit_cluster.running_nodes() == {first, stopped, killed}
    # The killed node was the TLS one: its listener is back too.
    with socket.create_connection(("127.0.0.1", rabbit_cluster.tls_port), timeout=5):
        pass


# The next two run in this order (pytest keeps a module's order): the autouse fixture, not
# the test, restores what the first one stopped.
def test_a_test_may_leave_a_node_stopped(rabbit_cluster: RabbitCluster) -> None:
    rabbit_cluster.stop_node(1)
    assert rabbit_cluster.node(1).name not in rabbit_cluster.running_nodes()


def test_the_next_test_finds_every_node_running(rabbit_cluster: RabbitCluster) -> None:
    assert rabbit_cluster.running_nodes() == set(rabbit_cluster.node_names())
