"""The in-process dispatch cost: one consumer inside this process, CPU per message.

``python -m rwbench.inprocess ours|raw --url URL --queue Q --count N --log FILE`` drains N
messages the bench pre-loaded into Q and prints one JSON line ``{"kind", "count", "cpu_us",
"rate"}``. ``cpu_us`` is ``time.process_time()`` (every thread of the process) from the first
handler call to the N-th acknowledgement, divided by N.

- ``ours``: :class:`rabbitworker.host.WorkerHost` with the host's shipped default settings (only
  the URL given), a plugin object with one no-op ``work`` handler, counting in its
  ``rabbitworker_message_settled`` hook (called after the ack). The per-message INFO lines are on.
- ``raw``: an aio-pika consumer doing the host's work, as ``bench/raw_consumer.py`` does
  (``orjson.loads``, look the handler up, call it, ``await message.ack()``), no logging.

Both run on ``asyncio.run`` (asyncio's loop), after ``rabbitworker.logs.setup_logging("INFO")``,
with stderr (file descriptor 2) redirected to ``--log``: the same process conditions. With
``--cprofile FILE`` the window is also recorded with cProfile (which slows it down: the CPU
figure is then no measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage

TASK = "work"


class Window:
    """CPU and wall time from the first handler call to the ``count``-th settled message."""

    def __init__(self, count: int, profile: cProfile.Profile | None) -> None:
        self.count = count
        self.settled_count = 0
        self.cpu_first: float | None = None
        self.wall_first = 0.0
        self.cpu = 0.0
        self.wall = 0.0
        self.done = asyncio.Event()
        self.profile = profile

    def started(self) -> None:
        if self.cpu_first is None:
            if self.profile is not None:
                self.profile.enable()
            self.cpu_first = time.process_time()
            self.wall_first = time.monotonic()

    def settled(self) -> None:
        self.settled_count += 1
        if self.settled_count == self.count:
            assert self.cpu_first is not None
            self.cpu = time.process_time() - self.cpu_first
            self.wall = time.monotonic() - self.wall_first
            if self.profile is not None:
                self.profile.disable()
            self.done.set()


def make_handler(window: Window) -> Callable[[dict[str, Any]], Any]:
    async def work(message: dict[str, Any]) -> None:
        window.started()

    return work


async def run_ours(url: str, queue: str, prefetch: int, window: Window) -> None:
    from rabbitworker import QueueConfig, Settlement, hookimpl
    from rabbitworker.host import WorkerHost
    from rabbitworker.plugins import HostPlugins
    from rabbitworker.settings import HostSettings

    handler = make_handler(window)

    class Plugin:
        @hookimpl
        def rabbitworker_queues(self) -> list[QueueConfig]:
            return [
                QueueConfig(
                    name=queue,
                    routing_key=queue,
                    task_handlers={TASK: handler},
                    prefetch_count=prefetch,
                )
            ]

        @hookimpl
        def rabbitworker_message_settled(self, delivery: Any, outcome: Any) -> None:
            if outcome.settlement is Settlement.ACKED:
                window.settled()

    plugins = HostPlugins.select(Plugin())
    host = WorkerHost(HostSettings(amqp_url=url), plugins, plugins.collect_queues())
    task = asyncio.create_task(host.run(handle_signals=False))
    await asyncio.wait(
        [task, asyncio.create_task(window.done.wait())], return_when="FIRST_COMPLETED"
    )
    host.request_stop()
    await task


async def run_raw(url: str, queue: str, prefetch: int, window: Window) -> None:
    handlers = {TASK: make_handler(window)}

    async def on_message(message: AbstractIncomingMessage) -> None:
        body = orjson.loads(message.body)
        await handlers[body["task"]](body)
        await message.ack()
        window.settled()

    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    amqp_queue = await channel.get_queue(queue, ensure=False)
    await amqp_queue.consume(on_message)
    await window.done.wait()
    await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("ours", "raw"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--log", required=True, help="stderr goes here (the INFO lines)")
    parser.add_argument("--cprofile", help="also write cProfile stats of the window here")
    args = parser.parse_args()

    from rabbitworker.logs import setup_logging

    stdout = os.fdopen(os.dup(1), "w")
    log = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 2)
    os.dup2(log, 1)
    setup_logging("INFO")
    profile = cProfile.Profile() if args.cprofile else None
    window = Window(args.count, profile)
    run = run_ours if args.kind == "ours" else run_raw
    asyncio.run(run(args.url, args.queue, args.prefetch, window))
    if profile is not None:
        profile.dump_stats(args.cprofile)
    result = {
        "kind": args.kind,
        "count": window.settled_count,
        "cpu_us": window.cpu / args.count * 1e6,
        "rate": args.count / window.wall if window.wall else float("nan"),
    }
    print(json.dumps(result), file=stdout, flush=True)
    sys.stderr.flush()


if __name__ == "__main__":
    main()
