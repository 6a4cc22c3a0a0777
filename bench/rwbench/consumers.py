"""Consumer processes: spawning the host, raw aio-pika or FastStream, and reading their counts."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import psutil  # type: ignore[import-untyped]
from rabbitworker_bench.common import read_report

from rwbench.broker import BenchError, Broker

BENCH_DIR = Path(__file__).resolve().parent.parent
KINDS = ("ours", "raw", "faststream")
#: The host with one non-default setting, drained in the same rounds as the default host.
#: ``{port}`` becomes a free TCP port at spawn time.
HOST_VARIANTS = {
    "ours-metrics": {"RABBITWORKER_METRICS_PORT": "{port}"},
    "ours-json": {"RABBITWORKER_LOG_FORMAT": "json"},
    "ours-asyncio": {"RABBITWORKER_EVENT_LOOP": "asyncio"},
}
LABELS = {
    "ours": "rabbitworker-host",
    "raw": "raw aio-pika",
    "faststream": "FastStream",
    "ours-metrics": "rabbitworker-host, metrics on",
    "ours-json": "rabbitworker-host, JSON logs",
    "ours-asyncio": "rabbitworker-host, asyncio loop",
}
BENCH_PLUGIN = "bench"
SLEEP = 0.05
POLL = 0.01
STALL = 45.0


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


def free_port() -> int:
    """A TCP port nobody listens on right now (for the host's metrics endpoint)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def uvloop_installed() -> bool:
    """Whether the host would run on uvloop (it is installed in this environment)."""
    return importlib.util.find_spec("uvloop") is not None


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
        if kind == "ours" or kind in HOST_VARIANTS:
            command = host_command()
            if self.other_plugins:
                full_env["RABBITWORKER_DISABLED_PLUGINS"] = ",".join(self.other_plugins)
            full_env.update(self.host_env)
            for name, value in HOST_VARIANTS.get(kind, {}).items():
                full_env[name] = value.format(port=free_port())
        elif kind == "raw":
            command = [sys.executable, str(BENCH_DIR / "raw_consumer.py")]
        elif kind == "faststream":
            command = [sys.executable, str(BENCH_DIR / "faststream_consumer.py")]
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
