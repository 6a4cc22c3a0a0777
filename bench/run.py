"""Benchmark rabbitworker-host against a raw aio-pika consumer and FastStream.

Run ``python bench/run.py [--quick]`` (or ``nox -s bench -- --quick``) with RabbitMQ and its
management API on 127.0.0.1. Everything happens in a throwaway vhost, deleted at the end.

What is measured (see bench/README.md for more):

- Throughput and latency rows: N persistent ~200-byte JSON messages are pre-loaded into one
  durable queue, then a consumer process is started and drains them. The time is from the
  first handler call to the last acknowledgement, both taken with ``time.monotonic()`` inside
  the consumer (the host counts in its ``rabbitworker_message_settled`` hook, called after the
  ack; raw aio-pika right after ``await message.ack()``; FastStream when the subscriber returns,
  just before its ack). Rate = N / that time. Process start-up is outside the window.
  Consumers run in turn (ours, raw, FastStream, rotated each round); medians are printed.
- Start-up: from spawning the process until every queue has a consumer on the broker (bundled
  plugins), or until every one of the 200 queues has settled the one message pre-loaded in it.
- RSS: the consumer process's resident set (psutil), idle after start-up and after N messages.
- publish_task: 10 000 concurrent calls in one fresh process, after one untimed call.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aio_pika
import aiormq
import orjson
import psutil  # type: ignore[import-untyped]
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from rabbitworker_bench.common import declare_topology, read_report

HERE = Path(__file__).resolve().parent
BROKER_HOST = os.environ.get("RWBENCH_BROKER_HOST", "127.0.0.1")
API = f"http://{BROKER_HOST}:15672/api"
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()
KINDS = ("ours", "raw", "faststream")
LABELS = {"ours": "rabbitworker-host", "raw": "raw aio-pika", "faststream": "FastStream"}
BENCH_PLUGIN = "bench"
SLEEP = 0.05
POLL = 0.01
STALL = 45.0
T = TypeVar("T")


class BenchError(RuntimeError):
    """A consumer died or a scenario could not complete."""


@dataclass(frozen=True)
class Mode:
    """How much work each scenario does."""

    name: str
    messages: int
    messages_p1: int
    rounds: int
    rounds_low: int
    latency_messages: int
    latency_rounds: int
    mixed_fast: int
    mixed_backlog: tuple[int, int]
    mixed_rounds: int
    startup_rounds: int
    rss_small: int
    rss_large: int
    rss_idle_wait: float
    rss_kinds: tuple[str, ...]
    publish_count: int
    publish_rounds: int
    competing_messages: int
    competing_rounds: int
    competing_kinds: tuple[str, ...]


FULL = Mode(
    "full",
    messages=20_000,
    messages_p1=5_000,
    rounds=5,
    rounds_low=3,
    latency_messages=1_000,
    latency_rounds=2,
    mixed_fast=10_000,
    mixed_backlog=(2_000, 200),
    mixed_rounds=2,
    startup_rounds=3,
    rss_small=20_000,
    rss_large=200_000,
    rss_idle_wait=2.0,
    rss_kinds=("ours", "raw"),
    publish_count=10_000,
    publish_rounds=3,
    competing_messages=20_000,
    competing_rounds=2,
    competing_kinds=("ours", "raw"),
)
QUICK = Mode(
    "quick",
    messages=4_000,
    messages_p1=1_500,
    rounds=2,
    rounds_low=1,
    latency_messages=200,
    latency_rounds=1,
    mixed_fast=2_000,
    mixed_backlog=(600, 60),
    mixed_rounds=1,
    startup_rounds=1,
    rss_small=2_000,
    rss_large=10_000,
    rss_idle_wait=0.6,
    rss_kinds=KINDS,
    publish_count=5_000,
    publish_rounds=1,
    competing_messages=4_000,
    competing_rounds=1,
    competing_kinds=("ours",),
)

SCENARIOS = ("throughput", "latency", "mixed", "startup", "rss", "publish", "competing")


# -- the broker ---------------------------------------------------------------------------


def api(method: str, path: str, body: Any = None) -> Any:
    """Call the RabbitMQ management API."""
    request = urllib.request.Request(
        f"{API}/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": AUTH, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        data = response.read()
    return json.loads(data) if data else None


def wait_for_broker(limit: float = 120.0) -> dict[str, Any]:
    """Wait until the management API answers (the shared broker may be restarting)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            overview: dict[str, Any] = api("GET", "overview")
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"RabbitMQ management API at {API} does not answer: {exc}"
                ) from exc
            time.sleep(1)
        else:
            if overview.get("rabbitmq_version"):
                return overview
            time.sleep(1)


def message_body(index: int) -> bytes:
    """A ~200-byte task message, ``{"task": ..., "payload": {...}}``."""
    payload = {
        "id": index,
        "user": f"user-{index % 10_000:05d}",
        "email": f"user-{index % 10_000:05d}@example.com",
        "action": "thumbnail",
        "url": f"https://files.example.com/u/{index % 10_000:05d}/{index:08d}.jpg",
        "size": [640, 480],
    }
    body = orjson.dumps({"task": "work", "payload": payload})
    return body[:-2] + b',"pad":"' + b"x" * max(0, 190 - len(body)) + b'"}}'


class Broker:
    """A throwaway vhost and one AMQP connection to pre-load, purge and inspect queues."""

    def __init__(self) -> None:
        self.vhost = f"rwbench-{uuid.uuid4().hex[:10]}"
        self.url = f"amqp://guest:guest@{BROKER_HOST}:5672/{quote(self.vhost, safe='')}"
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._probe: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    def create(self) -> None:
        path = quote(self.vhost, safe="")
        api("PUT", f"vhosts/{path}", {})
        api("PUT", f"permissions/{path}/guest", {"configure": ".*", "write": ".*", "read": ".*"})

    def delete(self) -> None:
        """Delete the vhost, retrying for a while (the shared broker may be restarting)."""
        for attempt in range(10):
            try:
                api("DELETE", f"vhosts/{quote(self.vhost, safe='')}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return
                raise
            except OSError as exc:
                if attempt == 9:
                    print(f"could not delete vhost {self.vhost}: {exc}", file=sys.stderr)
                time.sleep(3)

    async def reopen(self) -> None:
        """A new connection, after the broker went away."""
        with contextlib.suppress(Exception):
            await self.close()
        self._probe = None
        await self.open()

    async def open(self) -> None:
        self._connection = await aio_pika.connect(self.url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        await declare_topology(self._channel, [])
        self._exchange = await self._channel.get_exchange("tasks")

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def channel(self) -> AbstractChannel:
        """The bench's channel, opened again if the broker restarted since."""
        if (
            self._connection is None
            or self._connection.is_closed
            or self._channel is None
            or self._channel.is_closed
        ):
            await asyncio.to_thread(wait_for_broker)
            await self.reopen()
        assert self._channel is not None
        return self._channel

    async def declare(self, names: Sequence[str]) -> None:
        await declare_topology(await self.channel(), list(names))

    async def publish(self, queue: str, count: int, first: int = 0) -> float:
        """Publish ``count`` persistent messages to ``queue``, confirmed; return msg/s."""
        await self.channel()
        assert self._exchange is not None
        exchange = self._exchange
        started = time.perf_counter()
        window = 2_000
        for start in range(first, first + count, window):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            message_body(index),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=f"bench-{index}",
                        ),
                        queue,
                    )
                    for index in range(start, min(first + count, start + window))
                )
            )
        return count / (time.perf_counter() - started)

    async def depth(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of ``queue``, from a passive declare."""
        declared = await (await self.channel()).declare_queue(queue, passive=True)
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0

    async def all_consumed(self, queues: Sequence[str]) -> bool:
        """Whether every queue exists and has a consumer (on a probe channel: a passive
        declare of a missing queue closes its channel)."""
        await self.channel()
        assert self._connection is not None
        if self._probe is None or self._probe.is_closed:
            self._probe = await self._connection.channel()
        for queue in queues:
            try:
                declared = await self._probe.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return False
            if not declared.declaration_result.consumer_count:
                return False
        return True

    async def purge(self, names: Sequence[str]) -> None:
        channel = await self.channel()
        for name in names:
            queue = await channel.get_queue(name, ensure=False)
            await queue.purge()


# -- consumer processes -------------------------------------------------------------------


@dataclass
class QueueTally:
    """One queue's counts merged over every consumer process."""

    count: int = 0
    first: float | None = None
    last: float | None = None
    cpu: float = 0.0

    def cpu_per_message(self) -> float:
        """Consumer CPU seconds per message (all its processes)."""
        return self.cpu / self.count if self.count else float("nan")

    def rate(self, count: int | None = None) -> float:
        """Messages per second between the first handler call and the last ack."""
        if self.first is None or self.last is None or self.last <= self.first:
            return float("nan")
        return (self.count if count is None else count) / (self.last - self.first)


def report_files(directory: Path) -> list[Path]:
    """The ``<pid>.json`` progress reports in ``directory``."""
    return list(directory.glob("*.json"))


def read_reports(directory: Path) -> dict[str, QueueTally]:
    """Merge the progress reports of every consumer in ``directory``.

    Each tally's ``cpu`` is the CPU time its processes spent from their first message to their
    last count change: meaningful when a drain has one queue.
    """
    merged: dict[str, QueueTally] = {}
    for path in report_files(directory):
        cpu, tallies = read_report(path)
        for name, tally in tallies.items():
            total = merged.setdefault(name, QueueTally())
            total.count += tally.count
            if tally.first is not None:
                total.first = tally.first if total.first is None else min(total.first, tally.first)
            if tally.last is not None:
                total.last = tally.last if total.last is None else max(total.last, tally.last)
            if tally.cpu_first is not None:
                total.cpu += cpu - tally.cpu_first
    return merged


@dataclass
class Consumer:
    """One consumer subprocess (host, raw or FastStream) and its log file."""

    kind: str
    process: subprocess.Popen[bytes]
    log_path: Path
    spawned: float
    profiler: subprocess.Popen[bytes] | None = None

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{LABELS[self.kind]} exited with code {code}:\n{self.log_tail()}")

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait (kill after ``timeout``); return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        if self.profiler is not None:
            try:
                self.profiler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
        return code


async def run_process(command: list[str], env: dict[str, str]) -> str:
    """Run ``command`` with ``env`` over a clean ``RABBITWORKER_*``; return its stdout."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITWORKER_")}
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**full_env, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    if process.returncode:
        raise BenchError(f"{' '.join(command)} failed:\n{stderr.decode(errors='replace')[-2000:]}")
    return stdout.decode()


def touch(path: Path) -> None:
    path.touch()


def installed_plugins() -> list[str]:
    """Entry-point names in the ``rabbitworker.queues`` group."""
    return sorted({ep.name for ep in entry_points(group="rabbitworker.queues")})


def host_command() -> list[str]:
    """The ``rabbitworker-host`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "rabbitworker-host"
    if script.exists():
        return [str(script)]
    found = shutil.which("rabbitworker-host")
    if found is None:
        raise BenchError("rabbitworker-host is not installed in this environment")
    return [found]


class Runner:
    """Starts consumers in the bench's vhost and waits for their counts."""

    def __init__(
        self,
        broker: Broker,
        workdir: Path,
        profile_dir: Path | None = None,
        host_env: dict[str, str] | None = None,
        profile_native: bool = True,
    ) -> None:
        self.profile_args = ["--native"] if profile_native else ["--nonblocking"]
        self.broker = broker
        self.host_env = host_env or {}
        self.workdir = workdir
        self.profile_dir = profile_dir
        self.other_plugins = [name for name in installed_plugins() if name != BENCH_PLUGIN]
        self._serial = 0

    def _name(self, label: str) -> str:
        self._serial += 1
        return f"{self._serial:03d}-{label}"

    def spawn(self, kind: str, env: dict[str, str], label: str) -> Consumer:
        """Start a consumer of ``kind`` with the host's shipped defaults plus ``env``."""
        full_env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITWORKER_", "RWBENCH_"))
        }
        full_env["RABBITWORKER_AMQP_URL"] = self.broker.url
        full_env["RWBENCH_SLEEP"] = str(SLEEP)
        if kind == "ours":
            command = host_command()
            if self.other_plugins:
                full_env["RABBITWORKER_DISABLED_PLUGINS"] = ",".join(self.other_plugins)
            full_env.update(self.host_env)
        elif kind == "raw":
            command = [sys.executable, str(HERE / "raw_consumer.py")]
        elif kind == "faststream":
            command = [sys.executable, str(HERE / "faststream_consumer.py")]
        else:
            raise ValueError(kind)
        full_env.update(env)
        name = self._name(label)
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            spawned = time.monotonic()
            process = subprocess.Popen(
                command,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        consumer = Consumer(kind, process, log_path, spawned)
        if self.profile_dir is not None:
            consumer.profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(process.pid),
                    "--rate",
                    "250",
                    *self.profile_args,
                    "--format",
                    "raw",
                    "-o",
                    str(self.profile_dir / f"{name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        return consumer

    async def wait_counts(
        self,
        report_dir: Path,
        expected: dict[str, int],
        consumers: Sequence[Consumer],
        limit: float,
    ) -> dict[str, QueueTally]:
        """Poll the progress reports until every queue in ``expected`` reached its count.

        :raises BenchError: a consumer died, ``limit`` seconds passed, or nothing was counted
            for :data:`STALL` seconds (say, after the shared broker restarted).
        """
        now = time.monotonic()
        deadline, progress_at, progress = now + limit, now, -1
        while True:
            tallies = read_reports(report_dir)
            if all(
                tallies.get(name, QueueTally()).count >= count for name, count in expected.items()
            ):
                return tallies
            for consumer in consumers:
                consumer.check_alive()
            now = time.monotonic()
            total = sum(tally.count for tally in tallies.values())
            if total != progress:
                progress, progress_at = total, now
            if now > deadline or now - progress_at > STALL:
                counts = {name: tallies.get(name, QueueTally()).count for name in expected}
                why = "timed out" if now > deadline else "no progress"
                raise BenchError(f"{why} after {now - progress_at:.0f} s; counts {counts}")
            await asyncio.sleep(POLL)

    async def drain(
        self,
        kind: str,
        spec: str,
        expected: dict[str, int],
        label: str,
        *,
        processes: int = 1,
        gate: bool = False,
    ) -> dict[str, QueueTally]:
        """Start ``processes`` consumers of ``kind`` on ``spec`` and wait for ``expected``.

        With ``gate``, the consumers wait until all have loaded, then connect together.
        """
        report_dir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.workdir))
        env = {"RWBENCH_QUEUES": spec, "RWBENCH_REPORT_DIR": str(report_dir)}
        gate_path = report_dir / "go"
        if gate:
            env["RWBENCH_START_GATE"] = str(gate_path)
        consumers = [self.spawn(kind, env, label) for _ in range(processes)]
        try:
            if gate:
                await self.wait_files(report_dir, processes, consumers)
                touch(gate_path)
            limit = 60 + sum(expected.values()) / 200
            tallies = await self.wait_counts(report_dir, expected, consumers, limit)
        finally:
            for consumer in consumers:
                consumer.stop()
        return tallies

    async def wait_files(self, directory: Path, count: int, consumers: Sequence[Consumer]) -> None:
        """Wait until ``count`` consumers wrote their first report (they are at the gate)."""
        deadline = time.monotonic() + 60
        while len(report_files(directory)) < count:
            for consumer in consumers:
                consumer.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("consumers did not start within 60 s")
            await asyncio.sleep(POLL)


# -- results ------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    cells: dict[str, str]
    vs_raw: str = ""
    vs_faststream: str = ""
    target: str = ""
    result: str = ""


@dataclass
class Results:
    """Every row plus every sample, for the tables."""

    rows: list[Row] = field(default_factory=list)
    samples: list[tuple[str, str, list[float], str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def sample(self, scenario: str, kind: str, values: list[float], unit: str) -> None:
        self.samples.append((scenario, kind, values, unit))


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def fmt_rate(value: float) -> str:
    return "—" if value != value else f"{value:,.0f} msg/s"


def ratio(a: float, b: float) -> float:
    return a / b if b and a == a and b == b else float("nan")


def fmt_ratio(value: float) -> str:
    return "—" if value != value else f"{value:.2f}x"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def rotated(items: Sequence[T], by: int) -> list[T]:
    """``items`` rotated left by ``by``, so each round starts with another consumer."""
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


# -- scenarios ----------------------------------------------------------------------------


class Bench:
    """The scenarios of issue 5, each adding rows to :attr:`results`."""

    def __init__(self, runner: Runner, mode: Mode, kinds: Sequence[str]) -> None:
        self.runner = runner
        self.broker = runner.broker
        self.mode = mode
        self.kinds = list(kinds)
        self.results = Results()

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    async def attempt(self, label: str, step: Callable[[], Awaitable[T]]) -> T:
        """Run one measurement; if it failed because the shared broker went away (other
        sessions' fault tests restart it), wait for the broker and run it again."""
        for attempt in range(3):
            try:
                return await step()
            except (
                BenchError,
                aio_pika.exceptions.AMQPError,
                aiormq.exceptions.ChannelInvalidStateError,
                OSError,
                TimeoutError,
            ) as exc:
                if attempt == 2:
                    raise
                reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[-1]}"
                self.log(f"{label} failed ({reason}); waiting for the broker, then again")
                self.results.notes.append(f"{label}: measured again after {reason}")
                await asyncio.to_thread(wait_for_broker)
                await self.broker.reopen()
        raise AssertionError("unreachable")

    async def settle_queue(self, queue: str, label: str) -> None:
        """After a drain every message must be acked: the queue must be empty."""
        ready, _ = await self.broker.depth(queue)
        if ready:
            self.results.notes.append(f"{label}: {ready} message(s) were left unacked in {queue}")
            await self.broker.purge([queue])

    async def rates(
        self,
        queue: str,
        spec: str,
        count: int,
        rounds: int,
        label: str,
        kinds: Sequence[str] | None = None,
    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Pre-load ``count`` messages and drain them with each kind, ``rounds`` times.

        :returns: msg/s and consumer CPU µs per message, per kind, one value per round.
        """
        kinds = list(kinds or self.kinds)
        rates: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
        await self.broker.declare([queue])

        async def measure(kind: str) -> tuple[float, float]:
            await self.broker.purge([queue])
            await self.broker.publish(queue, count)
            tallies = await self.runner.drain(kind, spec, {queue: count}, f"{label}-{kind}")
            await self.settle_queue(queue, f"{label} {kind}")
            return tallies[queue].rate(count), tallies[queue].cpu_per_message() * 1e6

        for round_ in range(rounds):
            for kind in rotated(kinds, round_):
                rate, micros = await self.attempt(f"{label} {kind}", partial(measure, kind))
                rates[kind].append(rate)
                cpu[kind].append(micros)
                self.log(
                    f"{label} round {round_ + 1} {LABELS[kind]}: {rate:,.0f} msg/s, "
                    f"{micros:.0f} µs CPU/msg"
                )
        for kind in kinds:
            self.results.sample(label, kind, rates[kind], "msg/s")
            self.results.sample(f"{label} CPU per message", kind, cpu[kind], "µs")
        return rates, cpu

    def add_cpu_row(self, scenario: str, cpu: dict[str, list[float]]) -> None:
        """A row of consumer CPU per message; its ratios are theirs ÷ ours (> 1: we use less)."""
        ours, raw, fs = (median(cpu.get(kind, [])) for kind in KINDS)
        self.results.rows.append(
            Row(
                scenario,
                {
                    kind: "—" if value != value else f"{value:.0f} µs"
                    for kind, value in zip(KINDS, (ours, raw, fs), strict=True)
                },
                fmt_ratio(ratio(raw, ours)) + " (raw ÷ us)",
                fmt_ratio(ratio(fs, ours)) + " (FS ÷ us)",
                "(diagnostic: robust to other load on the machine)",
            )
        )

    def add_comparison(
        self,
        scenario: str,
        rates: dict[str, list[float]],
        target: str = "",
        check: Callable[[float, float], bool] | None = None,
    ) -> None:
        ours, raw, fs = (median(rates.get(kind, [])) for kind in KINDS)
        vs_raw, vs_fs = ratio(ours, raw), ratio(ours, fs)
        result = ""
        if check is not None:
            result = verdict(check(vs_raw, vs_fs)) if vs_raw == vs_raw else "—"
        self.results.rows.append(
            Row(
                scenario,
                {kind: fmt_rate(median(rates.get(kind, []))) for kind in KINDS},
                fmt_ratio(vs_raw),
                fmt_ratio(vs_fs),
                target,
                result,
            )
        )

    async def throughput(self, prefetches: Sequence[int], messages: int | None) -> None:
        for prefetch in prefetches:
            count = messages or (self.mode.messages_p1 if prefetch == 1 else self.mode.messages)
            queue = f"bench.p{prefetch}"
            self.log(f"throughput, prefetch {prefetch}, {count} messages")
            rounds = self.mode.rounds if prefetch == 100 else self.mode.rounds_low
            rates, cpu = await self.rates(
                queue, f"{queue}:{prefetch}:noop", count, rounds, f"p{prefetch}"
            )
            scenario = f"throughput, prefetch {prefetch}, no-op async handler ({count:,} msgs)"
            if prefetch == 100:
                self.add_comparison(
                    scenario,
                    rates,
                    "≥ 1.0x raw, ≥ 1.6x FastStream",
                    lambda r, f: r >= 1.0 and f >= 1.6,
                )
            else:
                self.add_comparison(scenario, rates)
            self.add_cpu_row(f"… consumer CPU per message, prefetch {prefetch}", cpu)

    async def latency(self) -> None:
        ideal = 10 / SLEEP
        for kind, label, target in (
            ("async_sleep", "await asyncio.sleep(0.05)", 0.97),
            ("sync_sleep", "plain time.sleep(0.05)", 0.95),
        ):
            queue = f"bench.latency.{kind}"
            count = self.mode.latency_messages
            self.log(f"latency-bound, prefetch 10, {label}, {count} messages")
            rates, _ = await self.rates(
                queue, f"{queue}:10:{kind}", count, self.mode.latency_rounds, f"lat-{kind}"
            )
            ours = median(rates["ours"]) if "ours" in rates else float("nan")
            self.add_comparison(
                f"latency-bound, prefetch 10, {label} ({count:,} msgs; ideal {ideal:.0f} msg/s)",
                rates,
                f"≥ {target:.2f}x ideal",
            )
            row = self.results.rows[-1]
            row.result = f"{ours / ideal:.3f}x ideal: {verdict(ours / ideal >= target)}"

    async def mixed(self) -> None:
        fast, medium, slow = "bench.mix.fast", "bench.mix.medium", "bench.mix.slow"
        count = self.mode.mixed_fast
        spec_alone = f"{fast}:20:noop"
        spec_mixed = f"{spec_alone},{medium}:10:async_sleep,{slow}:1:sync_sleep"
        backlog = dict(zip((medium, slow), self.mode.mixed_backlog, strict=True))
        await self.broker.declare([fast, medium, slow])
        alone: dict[str, list[float]] = {kind: [] for kind in self.kinds}
        together: dict[str, list[float]] = {kind: [] for kind in self.kinds}
        slow_rates: dict[str, list[float]] = {kind: [] for kind in self.kinds}
        self.log(f"three queues: fast p20 ({count} msgs) alone, then beside p10 and p1 sleepers")

        async def measure_alone(kind: str) -> float:
            await self.broker.purge([fast, medium, slow])
            await self.broker.publish(fast, count)
            tallies = await self.runner.drain(kind, spec_alone, {fast: count}, f"alone-{kind}")
            await self.settle_queue(fast, f"mixed alone {kind}")
            return tallies[fast].rate(count)

        async def measure_together(kind: str) -> tuple[float, float]:
            await self.broker.purge([fast, medium, slow])
            for queue, backlog_count in backlog.items():
                await self.broker.publish(queue, backlog_count)
            await self.broker.publish(fast, count)
            tallies = await self.runner.drain(kind, spec_mixed, {fast: count}, f"mixed-{kind}")
            return tallies[fast].rate(count), tallies[slow].rate()

        for round_ in range(self.mode.mixed_rounds):
            for kind in rotated(self.kinds, round_):
                alone[kind].append(
                    await self.attempt(f"alone {kind}", partial(measure_alone, kind))
                )
                fast_rate, slow_rate = await self.attempt(
                    f"mixed {kind}", partial(measure_together, kind)
                )
                together[kind].append(fast_rate)
                slow_rates[kind].append(slow_rate)
                self.log(
                    f"mixed round {round_ + 1} {LABELS[kind]}: fast alone "
                    f"{alone[kind][-1]:,.0f}, beside sleepers {together[kind][-1]:,.0f} msg/s, "
                    f"slow p1 queue {slow_rates[kind][-1]:.1f} msg/s"
                )
        await self.broker.purge([fast, medium, slow])
        for kind in self.kinds:
            self.results.sample("fast p20 alone", kind, alone[kind], "msg/s")
            self.results.sample("fast p20 beside sleepers", kind, together[kind], "msg/s")
            self.results.sample("slow p1 sync queue meanwhile", kind, slow_rates[kind], "msg/s")
        cells = {}
        for kind in KINDS:
            if kind in self.kinds:
                share = ratio(median(together[kind]), median(alone[kind]))
                cells[kind] = f"{fmt_rate(median(together[kind]))} ({fmt_ratio(share)} alone)"
            else:
                cells[kind] = "—"
        ours_share = ratio(median(together.get("ours", [])), median(alone.get("ours", [])))
        ratios = {k: median(together[k]) for k in self.kinds}
        self.results.rows.append(
            Row(
                f"3 queues at once: fast p20 no-op beside p10 async-sleep and p1 sync-sleep "
                f"queues ({count:,} msgs)",
                cells,
                fmt_ratio(ratio(ratios.get("ours", float("nan")), ratios.get("raw", float("nan")))),
                fmt_ratio(
                    ratio(ratios.get("ours", float("nan")), ratios.get("faststream", float("nan")))
                ),
                "fast queue not slowed (≈ 1.0x alone)",
                f"{fmt_ratio(ours_share)} alone",
            )
        )
        self.results.rows.append(
            Row(
                "… meanwhile the p1 sync-sleep queue (ideal 20 msg/s)",
                {
                    kind: f"{median(slow_rates[kind]):.1f} msg/s" if kind in self.kinds else "—"
                    for kind in KINDS
                },
                target="not starved",
            )
        )

    async def startup(self) -> None:
        await self.startup_bundled()
        await self.startup_generated(200)

    async def startup_bundled(self) -> None:
        bundled = self.runner.other_plugins
        queues: list[str] = []
        problem = "no bundled plugin is installed (pip install ./plugins/<name>)"
        if bundled:
            try:
                listing = await run_process(
                    [*host_command(), "queues", "--json"],
                    {"RABBITWORKER_DISABLED_PLUGINS": BENCH_PLUGIN},
                )
                queues = [row["queue"] for row in json.loads(listing)]
                problem = f"the installed plugins ({', '.join(bundled)}) contribute no queue"
            except BenchError as exc:
                problem = f"`rabbitworker-host queues` failed: {str(exc).splitlines()[-1]}"
        if not queues:
            self.results.rows.append(
                Row(
                    "start-up to consuming, the 3 bundled plugins",
                    {"ours": "skipped", "raw": "—", "faststream": "—"},
                    target="< 1 s",
                    result=f"not run: {problem}",
                )
            )
            return
        self.log(f"start-up with plugins {', '.join(bundled)} ({len(queues)} queues)")
        times: list[float] = []

        async def measure() -> float:
            consumer = self.runner.spawn(
                "ours", {"RABBITWORKER_DISABLED_PLUGINS": BENCH_PLUGIN}, "startup-bundled"
            )
            try:
                deadline = time.monotonic() + 60
                while not await self.broker.all_consumed(queues):
                    consumer.check_alive()
                    if time.monotonic() > deadline:
                        raise BenchError("the host did not consume every queue within 60 s")
                    await asyncio.sleep(POLL)
                return time.monotonic() - consumer.spawned
            finally:
                consumer.stop()

        for _ in range(self.mode.startup_rounds):
            times.append(await self.attempt("start-up with bundled plugins", measure))
            self.log(f"start-up with bundled plugins: {times[-1]:.3f} s")
        self.results.sample("start-up, bundled plugins", "ours", times, "s")
        best = median(times)
        self.results.rows.append(
            Row(
                f"start-up to consuming, bundled plugins ({', '.join(bundled)}: "
                f"{len(queues)} queues)",
                {"ours": f"{best:.2f} s", "raw": "—", "faststream": "—"},
                target="< 1 s",
                result=verdict(best < 1.0),
            )
        )

    async def startup_generated(self, count: int) -> None:
        names = [f"bench.gen.{index:03d}" for index in range(count)]
        await self.broker.declare(names)
        self.log(f"start-up with {count} generated queues")
        times: dict[str, list[float]] = {kind: [] for kind in self.kinds}

        async def measure(kind: str) -> float:
            await self.broker.purge(names)
            await asyncio.gather(*(self.broker.publish(name, 1) for name in names))
            report_dir = Path(tempfile.mkdtemp(prefix="startup-", dir=self.runner.workdir))
            consumer = self.runner.spawn(
                kind,
                {"RWBENCH_GENERATED_QUEUES": str(count), "RWBENCH_REPORT_DIR": str(report_dir)},
                f"startup-{count}-{kind}",
            )
            try:
                tallies = await self.runner.wait_counts(
                    report_dir, dict.fromkeys(names, 1), [consumer], 120
                )
            finally:
                consumer.stop()
            return max(t.last for t in tallies.values() if t.last is not None) - consumer.spawned

        for round_ in range(self.mode.startup_rounds):
            for kind in rotated(self.kinds, round_):
                times[kind].append(await self.attempt(f"start-up {kind}", partial(measure, kind)))
                self.log(f"start-up, {count} queues, {LABELS[kind]}: {times[kind][-1]:.3f} s")
        for kind, values in times.items():
            self.results.sample(f"start-up, {count} queues", kind, values, "s")
        cells = {
            kind: f"{median(times[kind]):.2f} s" if kind in self.kinds else "—" for kind in KINDS
        }
        ours = median(times.get("ours", []))
        self.results.rows.append(
            Row(
                f"start-up to consuming, {count} generated queues (spawn → every queue delivered)",
                cells,
                target="< 5 s",
                result=verdict(ours < 5.0),
            )
        )

    async def rss(self) -> None:
        queue = "bench.rss"
        small, large = self.mode.rss_small, self.mode.rss_large
        await self.broker.declare([queue])
        self.log(f"RSS idle, after {small:,} and after {large:,} messages")
        cells: dict[str, tuple[int, int, int]] = {}

        async def measure(kind: str) -> tuple[int, int, int]:
            await self.broker.purge([queue])
            report_dir = Path(tempfile.mkdtemp(prefix="rss-", dir=self.runner.workdir))
            env = {"RWBENCH_QUEUES": f"{queue}:100:noop", "RWBENCH_REPORT_DIR": str(report_dir)}
            consumer = self.runner.spawn(kind, env, f"rss-{kind}")
            try:
                deadline = time.monotonic() + 60
                while (await self.broker.depth(queue))[1] < 1:
                    consumer.check_alive()
                    if time.monotonic() > deadline:
                        raise BenchError(f"{LABELS[kind]} did not start consuming within 60 s")
                    await asyncio.sleep(POLL)
                await asyncio.sleep(self.mode.rss_idle_wait)
                idle = consumer.rss()
                await self.broker.publish(queue, small)
                await self.runner.wait_counts(report_dir, {queue: small}, [consumer], 600)
                await asyncio.sleep(self.mode.rss_idle_wait / 2)
                after_small = consumer.rss()
                await self.broker.publish(queue, large - small, first=small)
                await self.runner.wait_counts(report_dir, {queue: large}, [consumer], 1200)
                await asyncio.sleep(self.mode.rss_idle_wait / 2)
                return idle, after_small, consumer.rss()
            finally:
                consumer.stop()

        for kind in (kind for kind in self.kinds if kind in self.mode.rss_kinds):
            cells[kind] = await self.attempt(f"RSS {kind}", partial(measure, kind))
            idle, after_small, after_large = cells[kind]
            self.log(
                f"RSS {LABELS[kind]}: idle {idle / 2**20:.1f} MB, after {small:,} "
                f"{after_small / 2**20:.1f} MB, after {large:,} {after_large / 2**20:.1f} MB"
            )

        def mb(kind: str, index: int) -> str:
            return f"{cells[kind][index] / 2**20:.1f} MB" if kind in cells else "—"

        ours = cells.get("ours")
        self.results.rows.append(
            Row(
                "RSS idle (one p100 queue, after start-up)",
                {kind: mb(kind, 0) for kind in KINDS},
                target="< 60 MB",
                result=verdict(ours[0] < 60 * 2**20) if ours else "",
            )
        )
        self.results.rows.append(
            Row(f"RSS after {small:,} messages", {kind: mb(kind, 1) for kind in KINDS})
        )
        growth = {kind: value[2] / value[1] - 1 for kind, value in cells.items()}
        self.results.rows.append(
            Row(
                f"RSS after {large:,} messages (growth since {small:,})",
                {
                    kind: f"{mb(kind, 2)} ({growth[kind]:+.1%})" if kind in cells else "—"
                    for kind in KINDS
                },
                target=f"within 10 % of after {small:,}",
                result=verdict(abs(growth["ours"]) <= 0.10) if "ours" in growth else "",
            )
        )

    async def publish(self) -> None:
        queue = "bench.publish"
        count = self.mode.publish_count
        await self.broker.declare([queue])
        self.log(f"publishing: {count:,} concurrent calls")
        rates: dict[str, list[float]] = {kind: [] for kind in self.kinds}
        env = {"RABBITWORKER_AMQP_URL": self.broker.url}

        async def measure(kind: str) -> float:
            await self.broker.purge([queue])
            command = [sys.executable, str(HERE / "publishers.py"), kind]
            output = await run_process(
                [*command, "--count", str(count), "--routing-key", queue], env
            )
            ready, _ = await self.broker.depth(queue)
            if ready != count + 1:
                self.results.notes.append(
                    f"publish {kind}: {ready} messages in the queue, expected {count + 1}"
                )
            return float(json.loads(output.strip().splitlines()[-1])["rate"])

        for round_ in range(self.mode.publish_rounds):
            for kind in rotated(self.kinds, round_):
                rate = await self.attempt(f"publish {kind}", partial(measure, kind))
                rates[kind].append(rate)
                self.log(f"publish round {round_ + 1} {LABELS[kind]}: {rate:,.0f} msg/s")
        await self.broker.purge([queue])
        for kind, values in rates.items():
            self.results.sample("publish", kind, values, "msg/s")
        self.add_comparison(
            f"publish_task: {count:,} concurrent calls, confirmed (raw: aio-pika with confirms)",
            rates,
            "≥ 0.8x raw",
            lambda r, _f: r >= 0.8,
        )

    async def competing(self) -> None:
        queue = "bench.compete"
        count = self.mode.competing_messages
        kinds = [kind for kind in self.mode.competing_kinds if kind in self.kinds]
        await self.broker.declare([queue])
        self.log(f"competing consumers: 1 vs 2 processes, prefetch 100, {count:,} messages")
        rates: dict[tuple[str, int], list[float]] = {}

        async def measure(kind: str, processes: int) -> float:
            await self.broker.purge([queue])
            await self.broker.publish(queue, count)
            tallies = await self.runner.drain(
                kind,
                f"{queue}:100:noop",
                {queue: count},
                f"compete{processes}-{kind}",
                processes=processes,
                gate=True,
            )
            await self.settle_queue(queue, f"competing {kind}x{processes}")
            return tallies[queue].rate(count)

        for round_ in range(self.mode.competing_rounds):
            for kind in rotated(kinds, round_):
                for processes in rotated([1, 2], round_):
                    rate = await self.attempt(
                        f"competing {kind}x{processes}",
                        partial(measure, kind, processes),
                    )
                    rates.setdefault((kind, processes), []).append(rate)
                    self.log(
                        f"competing round {round_ + 1} {LABELS[kind]} x {processes}: "
                        f"{rate:,.0f} msg/s"
                    )
        cells = {}
        for kind in KINDS:
            if (kind, 1) in rates:
                one, two = median(rates[(kind, 1)]), median(rates[(kind, 2)])
                cells[kind] = f"{fmt_rate(two)} vs {fmt_rate(one)} ({fmt_ratio(two / one)})"
                self.results.sample("competing x1", kind, rates[(kind, 1)], "msg/s")
                self.results.sample("competing x2", kind, rates[(kind, 2)], "msg/s")
            else:
                cells[kind] = "—"
        self.results.rows.append(
            Row(
                f"2 processes vs 1 on one queue (competing consumers, p100, {count:,} msgs)",
                cells,
                target="(documented, no target)",
            )
        )


# -- report -------------------------------------------------------------------------------


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_description(load_at_start: str) -> list[str]:
    """Cores, CPU, Python, RabbitMQ, client library versions, load."""
    overview = api("GET", "overview")
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = ", ".join(
        f"{name} {package_version(name)}"
        for name in ("rabbitworker-host", "aio-pika", "aiormq", "faststream", "orjson", "loguru")
    )
    return [
        f"- machine: {os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} "
        f"GiB, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        f"- RabbitMQ {overview.get('rabbitmq_version')} (Erlang {overview.get('erlang_version')}) "
        "on the same machine",
        f"- {packages}",
        f"- load average (1, 5, 15 min) at the start: {load_at_start}; at the end: "
        f"{load_average()} (the machine is shared: see the CPU-per-message rows)",
    ]


def render(results: Results, mode: Mode, elapsed: float, load_at_start: str) -> str:
    lines = [
        f"## rabbitworker benchmark ({mode.name} mode, {elapsed:.0f} s)",
        "",
        "| scenario | rabbitworker-host | raw aio-pika | FastStream | us/raw | us/FastStream "
        "| target | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results.rows:
        lines.append(
            f"| {row.scenario} | {row.cells.get('ours', '—')} | {row.cells.get('raw', '—')} "
            f"| {row.cells.get('faststream', '—')} | {row.vs_raw or '—'} "
            f"| {row.vs_faststream or '—'} | {row.target or '—'} | {row.result or '—'} |"
        )
    lines += ["", *machine_description(load_at_start), "", "Every sample (medians above):", ""]
    lines += ["| scenario | consumer | samples |", "| --- | --- | --- |"]
    for scenario, kind, values, unit in results.samples:
        shown = ", ".join(f"{v:.3f}" if unit == "s" else f"{v:,.0f}" for v in values)
        lines.append(f"| {scenario} | {LABELS[kind]} | {shown} {unit} |")
    if results.notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in results.notes)]
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds (< 2 min)")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run, of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="consumers to compare: ours, raw, faststream"
    )
    parser.add_argument("--prefetch", default="1,10,100", help="throughput rows' prefetch counts")
    parser.add_argument("--messages", type=int, help="override the throughput message count")
    parser.add_argument("--rounds", type=int, help="override the throughput rounds")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record every consumer with `py-spy record --native` (collapsed stacks) into DIR",
    )
    parser.add_argument(
        "--profile-python-only",
        action="store_true",
        help="with --profile: `--nonblocking` Python stacks instead of `--native` (which stops "
        "the process for each sample and so over-weights system calls)",
    )
    parser.add_argument(
        "--host-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for rabbitworker-host, for experiments (the default is none: "
        "the shipped settings), e.g. --host-env RABBITWORKER_LOG_LEVEL=WARNING",
    )
    parser.add_argument("--keep", action="store_true", help="keep the consumers' logs")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> tuple[str, bool]:
    """Run the scenarios; return the report and whether every scenario completed."""
    mode = QUICK if args.quick else FULL
    if args.rounds:
        mode = Mode(**{**mode.__dict__, "rounds": args.rounds, "rounds_low": args.rounds})
    scenarios = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    started = time.monotonic()
    load_at_start = load_average()
    workdir = Path(tempfile.mkdtemp(prefix="rwbench-"))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    wait_for_broker()
    broker = Broker()
    broker.create()
    try:
        await broker.open()
        host_env = dict(item.split("=", 1) for item in args.host_env)
        runner = Runner(broker, workdir, args.profile, host_env, not args.profile_python_only)
        bench = Bench(runner, mode, kinds)
        if host_env:
            bench.results.notes.append(
                f"rabbitworker-host ran with {host_env}, not the shipped default settings"
            )
        bench.log(f"vhost {broker.vhost}, logs in {workdir}, {mode.name} mode")
        complete = True
        for scenario in scenarios:
            try:
                if scenario == "throughput":
                    prefetches = [int(p) for p in args.prefetch.split(",")]
                    await bench.throughput(prefetches, args.messages)
                else:
                    await getattr(bench, scenario)()
            except Exception as exc:
                complete = False
                reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[-1]}"
                bench.log(f"scenario {scenario} failed: {reason}")
                bench.results.notes.append(f"scenario {scenario} did not complete: {reason}")
        with contextlib.suppress(Exception):
            await broker.close()
    finally:
        broker.delete()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = render(bench.results, mode, time.monotonic() - started, load_at_start)
    return report, complete


def main(argv: Sequence[str] | None = None) -> None:
    """Run the selected scenarios and print the markdown report."""
    args = parse_args(argv)
    # The bench's own connection may be cut when the shared broker restarts; it retries.
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    report, complete = asyncio.run(run(args))
    print(report)
    if args.output:
        args.output.write_text(report)
    if not complete:
        sys.exit(1)


if __name__ == "__main__":
    main()
