"""Latency-bound: prefetch 10 and a 50 ms handler, async and plain; the ideal is 200 msg/s."""

from __future__ import annotations

from rwbench.consumers import SLEEP
from rwbench.report import median, verdict
from rwbench.scenario import Bench


async def run(bench: Bench) -> None:
    ideal = 10 / SLEEP
    for kind, label, target in (
        ("async_sleep", "await asyncio.sleep(0.05)", 0.96),
        ("sync_sleep", "plain time.sleep(0.05)", 0.96),
    ):
        queue = f"bench.latency.{kind}"
        count = bench.mode.latency_messages
        bench.log(f"latency-bound, prefetch 10, {label}, {count} messages")
        rates, _ = await bench.rates(
            queue, f"{queue}:10:{kind}", count, bench.mode.latency_rounds, f"lat-{kind}"
        )
        ours = median(rates["ours"]) if "ours" in rates else float("nan")
        bench.add_comparison(
            f"latency-bound, prefetch 10, {label} ({count:,} msgs; ideal {ideal:.0f} msg/s)",
            rates,
            f"≥ {target:.2f}x ideal",
        )
        row = bench.results.rows[-1]
        row.result = f"{ours / ideal:.3f}x ideal: {verdict(ours / ideal >= target)}"
