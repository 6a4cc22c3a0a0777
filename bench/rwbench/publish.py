"""publish_task: concurrent confirmed publishes from one fresh process."""

from __future__ import annotations

import json
import sys
from functools import partial

from rwbench.consumers import BENCH_DIR, LABELS, run_process
from rwbench.report import rotated
from rwbench.scenario import Bench


async def run(bench: Bench) -> None:
    queue = "bench.publish"
    count = bench.mode.publish_count
    await bench.broker.declare([queue])
    bench.log(f"publishing: {count:,} concurrent calls")
    rates: dict[str, list[float]] = {kind: [] for kind in bench.kinds}
    env = {"RABBITWORKER_AMQP_URL": bench.broker.url}

    async def measure(kind: str) -> float:
        await bench.broker.purge([queue])
        command = [sys.executable, str(BENCH_DIR / "publishers.py"), kind]
        output = await run_process([*command, "--count", str(count), "--routing-key", queue], env)
        ready, _ = await bench.broker.depth(queue)
        if ready != count + 1:
            bench.results.notes.append(
                f"publish {kind}: {ready} messages in the queue, expected {count + 1}"
            )
        return float(json.loads(output.strip().splitlines()[-1])["rate"])

    for round_ in range(bench.mode.publish_rounds):
        for kind in rotated(bench.kinds, round_):
            rate = await bench.attempt(f"publish {kind}", partial(measure, kind))
            rates[kind].append(rate)
            bench.log(f"publish round {round_ + 1} {LABELS[kind]}: {rate:,.0f} msg/s")
    await bench.broker.purge([queue])
    for kind, values in rates.items():
        bench.results.sample("publish", kind, values, "msg/s")
    bench.add_comparison(
        f"publish_task: {count:,} concurrent calls, confirmed (raw: aio-pika with confirms)",
        rates,
        "≥ 0.8x raw",
        lambda r, _f: r >= 0.8,
    )
