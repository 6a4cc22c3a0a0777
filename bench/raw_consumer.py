"""Baseline (b): a plain aio-pika consumer doing the host's work, and nothing more.

Per message: decode the JSON body (orjson, as the host does), look the handler up in a dict by
``task``, call it (plain ``def`` handlers in a thread), ack. One channel with its own QoS per
queue, as the host has. Queues, handlers and counting come from ``RWBENCH_*`` exactly as for the
host plugin. Stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage
from rabbitworker_bench.common import (
    BenchQueue,
    Reporter,
    declare_topology,
    queues_from_env,
    run_handler_in_thread,
    wait_for_gate,
)

URL = os.environ.get("RABBITWORKER_AMQP_URL", "amqp://guest:guest@localhost:5672/")


def make_callback(queue: BenchQueue) -> Any:
    """The consume callback of one queue, with its handler table resolved once."""
    handlers = {
        task: run_handler_in_thread(handler) if queue.is_sync else handler
        for task, handler in queue.handlers.items()
    }
    tally = queue.tally

    async def on_message(message: AbstractIncomingMessage) -> None:
        body = orjson.loads(message.body)
        await handlers[body["task"]](body)
        await message.ack()
        tally.settled()

    return on_message


async def main() -> None:
    """Consume every bench queue until SIGTERM."""
    queues = queues_from_env()
    loop = asyncio.get_running_loop()
    threads = sum(queue.prefetch for queue in queues if queue.is_sync)
    if threads:
        loop.set_default_executor(ThreadPoolExecutor(max_workers=threads))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reporter = Reporter(queues)
    reporter.start()
    await wait_for_gate()
    connection = await aio_pika.connect_robust(URL)
    setup = await connection.channel()
    await declare_topology(setup, [queue.name for queue in queues])
    await setup.close()
    for queue in queues:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=queue.prefetch)
        amqp_queue = await channel.get_queue(queue.name, ensure=False)
        await amqp_queue.consume(make_callback(queue))
    print(f"consuming from {len(queues)} queue(s)", file=sys.stderr, flush=True)
    await stop.wait()
    await connection.close()
    await reporter.stop()


if __name__ == "__main__":
    asyncio.run(main())
