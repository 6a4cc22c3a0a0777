"""The topology the host declares at start-up, as the broker sees it.

Two queues share the default DLX/DLQ; a third has its own. The broker's management API says
what exists; dead-lettering done by the broker itself shows where dead letters go.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from brokertools import AmqpClient, Broker, HostProcess, async_wait_for

from rabbitworker import QueueConfig
from rabbitworker.errors import PluginInfo
from rabbitworker.plugins import QueueRegistration
from rabbitworker.topology import plan_topology

SHARED = [
    {"name": "a.q", "routing_key": "a"},
    {"name": "b.q", "routing_key": "b", "prefetch_count": 2},
]
OWN = {
    "name": "own.q",
    "routing_key": "own",
    "dlx_exchange_name": "own.dlx",
    "dlq_name": "own.dlq",
}

pytestmark = pytest.mark.broker


@pytest.fixture
def topology_host(start_host: Callable[..., HostProcess]) -> HostProcess:
    return start_host([*SHARED, OWN])


def bindings_of(broker: Broker, source: str) -> set[tuple[str, str]]:
    """(destination queue, routing key) of every binding from exchange ``source``."""
    return {
        (b["destination"], b["routing_key"])
        for b in broker.bindings()
        if b["source"] == source and b["destination_type"] == "queue"
    }


def test_declares_the_work_exchange_durable(broker: Broker, topology_host: HostProcess) -> None:
    exchange = broker.exchange("tasks")

    assert exchange["durable"] is True
    assert exchange["auto_delete"] is False


def test_declares_each_queue_durable_with_its_dead_letter_exchange(
    broker: Broker, topology_host: HostProcess
) -> None:
    queues = broker.queues()

    for name, dlx in [("a.q", "tasks.dlx"), ("b.q", "tasks.dlx"), ("own.q", "own.dlx")]:
        assert queues[name]["durable"] is True
        assert queues[name]["arguments"]["x-dead-letter-exchange"] == dlx


def test_binds_each_queue_to_the_exchange_with_its_routing_key(
    broker: Broker, topology_host: HostProcess
) -> None:
    assert bindings_of(broker, "tasks") == {("a.q", "a"), ("b.q", "b"), ("own.q", "own")}


def test_declares_the_default_dlx_and_a_durable_dlq_bound_to_it(
    broker: Broker, topology_host: HostProcess
) -> None:
    assert broker.exchange("tasks.dlx")["durable"] is True
    assert broker.queue("tasks.dlq")["durable"] is True
    assert {queue for queue, _ in bindings_of(broker, "tasks.dlx")} == {"tasks.dlq"}


def test_queues_sharing_the_default_dlx_and_dlq_get_one_of_each(
    broker: Broker, topology_host: HostProcess
) -> None:
    exchanges = [name for name in broker.exchanges() if name.endswith(".dlx")]
    dlqs = [name for name in broker.queues() if name.endswith(".dlq")]
    # The default exchange ("") binds every queue implicitly; it is not ours.
    dlq_bindings = [b for b in broker.bindings() if b["destination"] == "tasks.dlq" and b["source"]]

    assert sorted(exchanges) == ["own.dlx", "tasks.dlx"]
    assert sorted(dlqs) == ["own.dlq", "tasks.dlq"]
    assert [b["source"] for b in dlq_bindings] == ["tasks.dlx"]


def test_a_queue_with_its_own_dlx_and_dlq_gets_them_declared_durable(
    broker: Broker, topology_host: HostProcess
) -> None:
    assert broker.exchange("own.dlx")["durable"] is True
    assert broker.queue("own.dlq")["durable"] is True
    assert {queue for queue, _ in bindings_of(broker, "own.dlx")} == {"own.dlq"}


async def test_every_message_the_broker_dead_letters_reaches_the_dlq_whatever_its_key(
    topology_host: HostProcess, amqp: AmqpClient
) -> None:
    assert await topology_host.async_stop() == 0
    for routing_key in ("a", "b", "own"):
        await amqp.publish({"task": "work"}, routing_key, message_id=routing_key)

    # Rejected without requeue, the broker dead-letters through x-dead-letter-exchange,
    # keeping the original routing key ("a", "b", "own"), which no DLQ is bound with.
    for queue in ("a.q", "b.q", "own.q"):
        declared = await amqp.channel.declare_queue(queue, passive=True)
        message = await declared.get(fail=True)
        assert message is not None
        await message.reject(requeue=False)

    await async_wait_for(
        lambda: _counts(amqp, {"tasks.dlq": 2, "own.dlq": 1}), message="dead letters in DLQs"
    )
    shared = sorted(str(m.message_id) for m in await amqp.take_all("tasks.dlq"))
    own = [str(m.message_id) for m in await amqp.take_all("own.dlq")]
    assert shared == ["a", "b"]
    assert own == ["own"]


async def _counts(amqp: AmqpClient, wanted: dict[str, int]) -> bool:
    return all([await amqp.ready(queue) == count for queue, count in wanted.items()])


# -- the plan, before anything reaches the broker (pure) -----------------------------------


async def _noop(message: dict[str, Any]) -> None:
    return None


def _registration(**fields: Any) -> QueueRegistration:
    return QueueRegistration(
        QueueConfig(task_handlers={"t": _noop}, **fields), PluginInfo(name="p", module="p")
    )


def test_the_plan_declares_a_shared_dlx_and_dlq_once() -> None:
    topology = plan_topology(
        [
            _registration(name="a.q", routing_key="a"),
            _registration(name="b.q", routing_key="b"),
        ]
    )

    assert sorted(topology.exchanges) == ["tasks", "tasks.dlx"]
    assert sorted(topology.queues) == ["a.q", "b.q", "tasks.dlq"]
    assert topology.queues["tasks.dlq"].bindings == (("tasks.dlx", ""),)


def test_the_plan_gives_a_queue_with_its_own_dlx_its_own_dlq() -> None:
    topology = plan_topology(
        [
            _registration(name="a.q", routing_key="a"),
            _registration(
                name="own.q", routing_key="o", dlx_exchange_name="o.dlx", dlq_name="o.dlq"
            ),
        ]
    )

    assert topology.queues["own.q"].arguments == {"x-dead-letter-exchange": "o.dlx"}
    assert topology.queues["o.dlq"].bindings == (("o.dlx", ""),)
    assert topology.queues["tasks.dlq"].bindings == (("tasks.dlx", ""),)


def test_a_quorum_queue_gets_quorum_dlq_and_retry_queues_dead_lettering_at_least_once(
    broker: Broker, start_host: Callable[..., HostProcess]
) -> None:
    start_host(
        [
            {
                "name": "q.q",
                "routing_key": "q",
                "queue_type": "quorum",
                "max_retries": 1,
                "retry_delays": [2],
                "dlq_name": "q.dlq",
                "dlx_exchange_name": "q.dlx",
            }
        ]
    )
    queues = broker.queues()

    work = queues["q.q"]["arguments"]
    assert work["x-queue-type"] == "quorum"
    assert work["x-dead-letter-strategy"] == "at-least-once"
    assert work["x-overflow"] == "reject-publish", "at-least-once needs it"
    retry = queues["q.q.retry.2000ms"]["arguments"]
    assert retry["x-queue-type"] == "quorum"
    assert retry["x-dead-letter-strategy"] == "at-least-once"
    assert queues["q.dlq"]["arguments"]["x-queue-type"] == "quorum"
    assert queues["q.dlq"]["type"] == "quorum"


def test_a_dlq_shared_by_a_classic_and_a_quorum_queue_is_quorum() -> None:
    async def handler(message: dict[str, Any]) -> None: ...

    registrations = [
        QueueRegistration(
            QueueConfig(name=name, routing_key=name, task_handlers={"t": handler}, queue_type=kind),
            PluginInfo("p"),
        )
        for name, kind in [("c.q", "classic"), ("r.q", "quorum")]
    ]
    assert plan_topology(registrations).queues["tasks.dlq"].arguments == {"x-queue-type": "quorum"}
    assert plan_topology(registrations[:1]).queues["tasks.dlq"].arguments == {}
