"""Baseline (c): FastStream's ``RabbitBroker`` subscribers doing the host's work.

One subscriber per queue, each on its own channel with the queue's prefetch, FastStream's
defaults otherwise (its JSON decoding into ``body: dict``, its per-message log lines, ack after
the handler returns). The subscriber looks the handler up by ``task`` and calls it (plain
``def`` handlers in a thread). It counts a message when the subscriber function returns, just
before FastStream acks it: FastStream has no cheaper after-ack point. Stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faststream.rabbit import Channel, RabbitBroker, RabbitExchange, RabbitQueue
from rabbitworker_bench.common import (
    EXCHANGE,
    QUEUE_ARGUMENTS,
    BenchQueue,
    Reporter,
    queues_from_env,
    run_handler_in_thread,
    wait_for_gate,
)

URL = os.environ.get("RABBITWORKER_AMQP_URL", "amqp://guest:guest@localhost:5672/")


def make_subscriber(queue: BenchQueue) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """The subscriber function of one queue, with its handler table resolved once."""
    handlers = {
        task: run_handler_in_thread(handler) if queue.is_sync else handler
        for task, handler in queue.handlers.items()
    }
    tally = queue.tally

    async def handle(body: dict[str, Any]) -> None:
        await handlers[body["task"]](body)
        tally.settled()

    return handle


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
    broker = RabbitBroker(URL)
    exchange = RabbitExchange(EXCHANGE, durable=True)
    for queue in queues:
        # The same arguments as the host declares (a plain dict, not FastStream's TypedDict).
        broker.subscriber(
            RabbitQueue(  # type: ignore[call-overload]
                queue.name, durable=True, arguments=QUEUE_ARGUMENTS, routing_key=queue.name
            ),
            exchange,
            channel=Channel(prefetch_count=queue.prefetch),
        )(make_subscriber(queue))
    await wait_for_gate()
    await broker.start()
    print(f"consuming from {len(queues)} queue(s)", file=sys.stderr, flush=True)
    await stop.wait()
    await broker.stop()
    await reporter.stop()


if __name__ == "__main__":
    asyncio.run(main())
