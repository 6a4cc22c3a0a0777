"""What the host plugin, the raw aio-pika consumer and the FastStream consumer share.

Queues come from ``RWBENCH_*`` variables; every consumer builds the same handlers and the
same :class:`Tally` per queue from them, so the three do identical work per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel

TASK = "work"
EXCHANGE = "tasks"
DLX = "tasks.dlx"
DLQ = "tasks.dlq"
KINDS = ("noop", "async_sleep", "sync_sleep")
REPORT_INTERVAL = 0.02
HEADER = struct.Struct("<d")
TALLY = struct.Struct("<qddd")
_NAN = float("nan")

Handler = Callable[[dict[str, Any]], Any]


def _host_queue_arguments() -> dict[str, Any]:
    """The arguments the host declares a default work queue with, asked from the host itself
    (an internal helper: the bench is no plugin), so pre-declared queues keep matching."""
    try:
        from rabbitworker import QueueConfig
        from rabbitworker.topology import queue_arguments

        config = QueueConfig(name="bench", routing_key="bench", task_handlers={TASK: print})
        return dict(queue_arguments(config))
    except Exception:
        return {"x-dead-letter-exchange": DLX}


#: What the host declares a work queue with; the bench and the baselines declare the same.
QUEUE_ARGUMENTS: dict[str, Any] = _host_queue_arguments()


@dataclass(slots=True)
class Tally:
    """Messages settled on one queue, and when the first started and the last finished.

    Times are ``time.monotonic()``, which on Linux is one clock for every process.
    ``cpu_first`` is the process's CPU time (``time.process_time()``) at the first message.
    """

    count: int = 0
    first: float | None = None
    last: float | None = None
    cpu_first: float | None = None

    def started(self) -> None:
        """Called by the handler: remember when the first message reached it."""
        if self.first is None:
            self.first = time.monotonic()
            self.cpu_first = time.process_time()

    def settled(self) -> None:
        """Called once a message is acknowledged."""
        self.count += 1
        self.last = time.monotonic()


@dataclass(slots=True)
class BenchQueue:
    """One queue of the benchmark: its name, prefetch, handler kind and counters."""

    name: str
    prefetch: int
    kind: str
    tally: Tally = field(default_factory=Tally)
    handlers: dict[str, Handler] = field(default_factory=dict)

    @property
    def is_sync(self) -> bool:
        return self.kind == "sync_sleep"


def make_handler(kind: str, tally: Tally, sleep: float) -> Handler:
    """The handler of one queue: ``noop``, ``async_sleep`` or ``sync_sleep``."""
    if kind == "noop":

        async def noop(message: dict[str, Any]) -> None:
            tally.started()

        return noop
    if kind == "async_sleep":

        async def async_sleep(message: dict[str, Any]) -> None:
            tally.started()
            await asyncio.sleep(sleep)

        return async_sleep
    if kind == "sync_sleep":

        def sync_sleep(message: dict[str, Any]) -> None:
            tally.started()
            time.sleep(sleep)

        return sync_sleep
    raise ValueError(f"unknown handler kind {kind!r}; use one of {', '.join(KINDS)}")


def queues_from_env(env: dict[str, str] | None = None) -> list[BenchQueue]:
    """Parse ``RWBENCH_QUEUES`` and ``RWBENCH_GENERATED_QUEUES`` into queues with handlers."""
    env = dict(os.environ) if env is None else env
    sleep = float(env.get("RWBENCH_SLEEP", "0.05"))
    queues: list[BenchQueue] = []
    for spec in filter(None, (part.strip() for part in env.get("RWBENCH_QUEUES", "").split(","))):
        name, prefetch, kind = spec.split(":")
        queues.append(BenchQueue(name, int(prefetch), kind))
    for index in range(int(env.get("RWBENCH_GENERATED_QUEUES", "0") or 0)):
        queues.append(BenchQueue(f"bench.gen.{index:03d}", 1, "noop"))
    for queue in queues:
        queue.handlers[TASK] = make_handler(queue.kind, queue.tally, sleep)
    return queues


class Reporter:
    """Publishes every queue's tally to the bench through a shared memory-mapped file.

    At start it writes ``<pid>.json`` (the queue names, once) and maps ``<pid>.tally``: the
    process's CPU time when the counts last changed (float64), then one little-endian
    ``(count: int64, first, last, cpu_first: float64)`` per queue, NaN for "not yet". Every
    20 ms the tallies are copied into the mapping: a memory copy, no system call, so the
    consumer pays nothing per message and nearly nothing per update. (An earlier version
    rewrote a JSON file; the renames cost ~8 % of the host's CPU.) Readers read until two
    reads agree.
    """

    def __init__(self, queues: list[BenchQueue], directory: str | None = None) -> None:
        directory = directory if directory is not None else os.environ.get("RWBENCH_REPORT_DIR")
        self.directory = Path(directory) if directory else None
        self.queues = queues
        self._map: mmap.mmap | None = None
        self._task: asyncio.Task[None] | None = None
        self._written = b""

    def _open(self) -> mmap.mmap | None:
        if self._map is None and self.directory is not None:
            pid = os.getpid()
            size = HEADER.size + TALLY.size * len(self.queues)
            tally_path = self.directory / f"{pid}.tally"
            tally_path.write_bytes(bytes(size))
            with tally_path.open("r+b") as file:
                self._map = mmap.mmap(file.fileno(), size)
            names = {"pid": pid, "queues": [queue.name for queue in self.queues]}
            partial = self.directory / f"{pid}.part"
            partial.write_bytes(orjson.dumps(names))
            partial.replace(self.directory / f"{pid}.json")
        return self._map

    def write(self) -> None:
        """Copy the tallies into the shared mapping if anything changed."""
        shared = self._open()
        if shared is None:
            return
        data = b"".join(
            TALLY.pack(
                tally.count,
                _NAN if tally.first is None else tally.first,
                _NAN if tally.last is None else tally.last,
                _NAN if tally.cpu_first is None else tally.cpu_first,
            )
            for tally in (queue.tally for queue in self.queues)
        )
        if data != self._written:
            shared[:] = HEADER.pack(time.process_time()) + data
            self._written = data

    async def _loop(self) -> None:
        while True:
            self.write()
            await asyncio.sleep(REPORT_INTERVAL)

    def start(self) -> None:
        """Write the queue names, then keep the tallies current from the running loop."""
        if self.directory is not None and self._task is None:
            self.write()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the background writer and write the final counts."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.write()
        if self._map is not None:
            self._map.close()
            self._map = None


def read_report(json_path: Path) -> tuple[float, dict[str, Tally]]:
    """One consumer's CPU time and tallies (written by :class:`Reporter`), by its ``<pid>.json``."""
    names = orjson.loads(json_path.read_bytes())["queues"]
    tally_path = json_path.with_suffix(".tally")
    data = tally_path.read_bytes()
    for _ in range(100):
        again = tally_path.read_bytes()
        if again == data:
            break
        data = again
    (cpu,) = HEADER.unpack_from(data)
    tallies = {}
    for index, name in enumerate(names):
        values = TALLY.unpack_from(data, HEADER.size + index * TALLY.size)
        count, first, last, cpu_first = (None if v != v else v for v in values)
        tallies[name] = Tally(int(count or 0), first, last, cpu_first)
    return cpu, tallies


def run_handler_in_thread(handler: Handler) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """Wrap a plain ``def`` handler the way the other consumers call it: in a worker thread."""

    async def call(message: dict[str, Any]) -> Any:
        return await asyncio.to_thread(handler, message)

    return call


async def declare_topology(channel: AbstractChannel, names: list[str]) -> None:
    """Declare what the host declares for ``names``: exchange, DLX, DLQ, queues, bindings."""
    exchange = await channel.declare_exchange(EXCHANGE, ExchangeType.DIRECT, durable=True)
    dlx = await channel.declare_exchange(DLX, ExchangeType.FANOUT, durable=True)
    dlq = await channel.declare_queue(DLQ, durable=True)
    await dlq.bind(dlx, "")
    for name in names:
        queue = await channel.declare_queue(name, durable=True, arguments=QUEUE_ARGUMENTS)
        await queue.bind(exchange, name)


async def wait_for_gate() -> None:
    """If ``RWBENCH_START_GATE`` names a file, wait for it (so consumers start together)."""
    gate = os.environ.get("RWBENCH_START_GATE")
    if gate:
        await asyncio.to_thread(_wait_for_file, gate)


def _wait_for_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.005)
