import asyncio

from brokertools import AmqpClient, Broker, wait_for

from rabbitworker import close_publishers, publish_task


async def test_host_acks_a_published_task(broker: Broker, amqp: AmqpClient, start_host) -> None:
    host = start_host()
    await publish_task({"task": "work", "payload": {"id": 1}}, "probe")
    await close_publishers()
    await asyncio.to_thread(wait_for, lambda: any(e["event"] == "end" for e in host.events()))
    host.wait_for_log("ACKed message")
    assert host.stop() == 0
    # AMQP's count, not the management API's (its statistics lag up to 5 s: one taken while
    # the message was in flight still says 1); with no host left, nothing is unacked.
    assert await amqp.ready("probe.q") == 0
