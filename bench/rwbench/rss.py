"""Resident memory: idle after start-up, after a first and a tenfold larger batch of messages."""

from __future__ import annotations

import asyncio
import tempfile
import time
from functools import partial
from pathlib import Path

from rwbench.broker import BenchError
from rwbench.consumers import KINDS, LABELS, POLL
from rwbench.report import Row, verdict
from rwbench.scenario import Bench


async def run(bench: Bench) -> None:
    queue = "bench.rss"
    small, large = bench.mode.rss_small, bench.mode.rss_large
    await bench.broker.declare([queue])
    bench.log(f"RSS idle, after {small:,} and after {large:,} messages")
    cells: dict[str, tuple[int, int, int]] = {}

    async def measure(kind: str) -> tuple[int, int, int]:
        await bench.broker.purge([queue])
        report_dir = Path(tempfile.mkdtemp(prefix="rss-", dir=bench.runner.workdir))
        env = {"RWBENCH_QUEUES": f"{queue}:100:noop", "RWBENCH_REPORT_DIR": str(report_dir)}
        consumer = bench.runner.spawn(kind, env, f"rss-{kind}")
        try:
            deadline = time.monotonic() + 60
            while (await bench.broker.depth(queue))[1] < 1:
                consumer.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{LABELS[kind]} did not start consuming within 60 s")
                await asyncio.sleep(POLL)
            await asyncio.sleep(bench.mode.rss_idle_wait)
            idle = consumer.rss()
            await bench.broker.publish(queue, small)
            await bench.runner.wait_counts(report_dir, {queue: small}, [consumer], 600)
            await asyncio.sleep(bench.mode.rss_idle_wait / 2)
            after_small = consumer.rss()
            await bench.broker.publish(queue, large - small, first=small)
            await bench.runner.wait_counts(report_dir, {queue: large}, [consumer], 1200)
            await asyncio.sleep(bench.mode.rss_idle_wait / 2)
            return idle, after_small, consumer.rss()
        finally:
            consumer.stop()

    for kind in (kind for kind in bench.kinds if kind in bench.mode.rss_kinds):
        cells[kind] = await bench.attempt(f"RSS {kind}", partial(measure, kind))
        idle, after_small, after_large = cells[kind]
        bench.log(
            f"RSS {LABELS[kind]}: idle {idle / 2**20:.1f} MB, after {small:,} "
            f"{after_small / 2**20:.1f} MB, after {large:,} {after_large / 2**20:.1f} MB"
        )

    def mb(kind: str, index: int) -> str:
        return f"{cells[kind][index] / 2**20:.1f} MB" if kind in cells else "—"

    ours = cells.get("ours")
    bench.results.rows.append(
        Row(
            "RSS idle (one p100 queue, after start-up)",
            {kind: mb(kind, 0) for kind in KINDS},
            target="< 50 MB",
            result=verdict(ours[0] < 50 * 2**20) if ours else "",
        )
    )
    bench.results.rows.append(
        Row(f"RSS after {small:,} messages", {kind: mb(kind, 1) for kind in KINDS})
    )
    growth = {kind: value[2] / value[1] - 1 for kind, value in cells.items()}
    bench.results.rows.append(
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
