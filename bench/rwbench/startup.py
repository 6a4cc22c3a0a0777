"""Start-up to consuming: the bundled plugins' queues, and 200 generated queues."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from functools import partial
from pathlib import Path

from rwbench.broker import BenchError
from rwbench.consumers import BENCH_PLUGIN, KINDS, LABELS, POLL, host_command, run_process
from rwbench.report import Row, median, rotated, verdict
from rwbench.scenario import Bench


async def run(bench: Bench) -> None:
    await startup_bundled(bench)
    await startup_generated(bench, 200)


async def startup_bundled(bench: Bench) -> None:
    bundled = bench.runner.other_plugins
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
        bench.results.rows.append(
            Row(
                "start-up to consuming, the 3 bundled plugins",
                {"ours": "skipped", "raw": "—", "faststream": "—"},
                target="< 1 s",
                result=f"not run: {problem}",
            )
        )
        return
    bench.log(f"start-up with plugins {', '.join(bundled)} ({len(queues)} queues)")
    times: list[float] = []

    async def measure() -> float:
        consumer = bench.runner.spawn(
            "ours", {"RABBITWORKER_DISABLED_PLUGINS": BENCH_PLUGIN}, "startup-bundled"
        )
        try:
            deadline = time.monotonic() + 60
            while not await bench.broker.all_consumed(queues):
                consumer.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError("the host did not consume every queue within 60 s")
                await asyncio.sleep(POLL)
            return time.monotonic() - consumer.spawned
        finally:
            consumer.stop()

    for _ in range(bench.mode.startup_rounds):
        times.append(await bench.attempt("start-up with bundled plugins", measure))
        bench.log(f"start-up with bundled plugins: {times[-1]:.3f} s")
    bench.results.sample("start-up, bundled plugins", "ours", times, "s")
    best = median(times)
    bench.results.rows.append(
        Row(
            f"start-up to consuming, bundled plugins ({', '.join(bundled)}: {len(queues)} queues)",
            {"ours": f"{best:.2f} s", "raw": "—", "faststream": "—"},
            target="< 1 s",
            result=verdict(best < 1.0),
        )
    )


async def startup_generated(bench: Bench, count: int) -> None:
    names = [f"bench.gen.{index:03d}" for index in range(count)]
    await bench.broker.declare(names)
    bench.log(f"start-up with {count} generated queues")
    times: dict[str, list[float]] = {kind: [] for kind in bench.kinds}

    async def measure(kind: str) -> float:
        await bench.broker.purge(names)
        await asyncio.gather(*(bench.broker.publish(name, 1) for name in names))
        report_dir = Path(tempfile.mkdtemp(prefix="startup-", dir=bench.runner.workdir))
        consumer = bench.runner.spawn(
            kind,
            {"RWBENCH_GENERATED_QUEUES": str(count), "RWBENCH_REPORT_DIR": str(report_dir)},
            f"startup-{count}-{kind}",
        )
        try:
            tallies = await bench.runner.wait_counts(
                report_dir, dict.fromkeys(names, 1), [consumer], 120
            )
        finally:
            consumer.stop()
        return max(t.last for t in tallies.values() if t.last is not None) - consumer.spawned

    for round_ in range(bench.mode.startup_rounds):
        for kind in rotated(bench.kinds, round_):
            times[kind].append(await bench.attempt(f"start-up {kind}", partial(measure, kind)))
            bench.log(f"start-up, {count} queues, {LABELS[kind]}: {times[kind][-1]:.3f} s")
    for kind, values in times.items():
        bench.results.sample(f"start-up, {count} queues", kind, values, "s")
    cells = {kind: f"{median(times[kind]):.2f} s" if kind in bench.kinds else "—" for kind in KINDS}
    ours = median(times.get("ours", []))
    bench.results.rows.append(
        Row(
            f"start-up to consuming, {count} generated queues (spawn → every queue delivered)",
            cells,
            target="< 2 s",
            result=verdict(ours < 2.0),
        )
    )
