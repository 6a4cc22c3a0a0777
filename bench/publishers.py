"""Publishing speed: COUNT concurrent publishes of one kind, timed, printed as one JSON line.

Kinds: ``ours`` (``rabbitworker.publish_task``), ``raw`` (aio-pika on a confirming channel,
persistent, mandatory, each publish awaited), ``faststream`` (``RabbitBroker.publish`` with
``persist=True``). Each first publishes one message untimed (connecting, opening the channel),
then times ``asyncio.gather`` of COUNT publishes: from the first call to the last confirm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import orjson

URL = os.environ.get("RABBITWORKER_AMQP_URL", "amqp://guest:guest@localhost:5672/")
EXCHANGE = "tasks"

Publish = Callable[[dict[str, Any]], Awaitable[Any]]


def body(index: int) -> dict[str, Any]:
    """A small task message (the same shape the consumers get)."""
    return {"task": "work", "payload": {"id": index, "user": f"user-{index % 1000:04d}"}}


async def timed(publish: Publish, count: int) -> float:
    """Publish once untimed, then ``count`` at once; return the seconds the batch took."""
    await publish(body(-1))
    started = time.perf_counter()
    await asyncio.gather(*(publish(body(index)) for index in range(count)))
    return time.perf_counter() - started


async def ours(routing_key: str, count: int) -> float:
    """``publish_task``, as an application would call it."""
    from rabbitworker import close_publishers, publish_task

    async def publish(message: dict[str, Any]) -> None:
        await publish_task(message, routing_key)

    try:
        return await timed(publish, count)
    finally:
        await close_publishers()


async def raw(routing_key: str, count: int) -> float:
    """aio-pika with publisher confirms: encode, publish persistent + mandatory, await confirm."""
    connection = await aio_pika.connect_robust(URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)

        async def publish(message: dict[str, Any]) -> None:
            await exchange.publish(
                aio_pika.Message(
                    orjson.dumps(message),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key,
                mandatory=True,
            )

        return await timed(publish, count)
    finally:
        await connection.close()


async def faststream(routing_key: str, count: int) -> float:
    """FastStream's ``RabbitBroker.publish`` (its channels confirm by default)."""
    from faststream.rabbit import RabbitBroker

    broker = RabbitBroker(URL)
    await broker.connect()
    try:

        async def publish(message: dict[str, Any]) -> None:
            await broker.publish(message, exchange=EXCHANGE, routing_key=routing_key, persist=True)

        return await timed(publish, count)
    finally:
        await broker.stop()


KINDS = {"ours": ours, "raw": raw, "faststream": faststream}


def main() -> None:
    """Parse arguments, publish, print ``{"kind", "count", "seconds", "rate"}``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--routing-key", default="bench.publish")
    args = parser.parse_args()
    seconds = asyncio.run(KINDS[args.kind](args.routing_key, args.count))
    result = {"kind": args.kind, "count": args.count, "seconds": seconds}
    print(json.dumps({**result, "rate": args.count / seconds}))


if __name__ == "__main__":
    main()
