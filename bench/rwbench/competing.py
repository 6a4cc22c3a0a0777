"""Competing consumers: one, then two, processes on one prefetch-100 queue."""

from __future__ import annotations

from functools import partial

from rwbench.consumers import KINDS, LABELS
from rwbench.report import Row, fmt_rate, fmt_ratio, median, rotated
from rwbench.scenario import Bench


async def run(bench: Bench) -> None:
    queue = "bench.compete"
    count = bench.mode.competing_messages
    kinds = [kind for kind in bench.mode.competing_kinds if kind in bench.kinds]
    await bench.broker.declare([queue])
    bench.log(f"competing consumers: 1 vs 2 processes, prefetch 100, {count:,} messages")
    rates: dict[tuple[str, int], list[float]] = {}

    async def measure(kind: str, processes: int) -> float:
        await bench.broker.purge([queue])
        await bench.broker.publish(queue, count)
        tallies = await bench.runner.drain(
            kind,
            f"{queue}:100:noop",
            {queue: count},
            f"compete{processes}-{kind}",
            processes=processes,
            gate=True,
        )
        await bench.settle_queue(queue, f"competing {kind}x{processes}")
        return tallies[queue].rate(count)

    for round_ in range(bench.mode.competing_rounds):
        for kind in rotated(kinds, round_):
            for processes in rotated([1, 2], round_):
                rate = await bench.attempt(
                    f"competing {kind}x{processes}",
                    partial(measure, kind, processes),
                )
                rates.setdefault((kind, processes), []).append(rate)
                bench.log(
                    f"competing round {round_ + 1} {LABELS[kind]} x {processes}: {rate:,.0f} msg/s"
                )
    cells = {}
    for kind in KINDS:
        if (kind, 1) in rates:
            one, two = median(rates[(kind, 1)]), median(rates[(kind, 2)])
            cells[kind] = f"{fmt_rate(two)} vs {fmt_rate(one)} ({fmt_ratio(two / one)})"
            bench.results.sample("competing x1", kind, rates[(kind, 1)], "msg/s")
            bench.results.sample("competing x2", kind, rates[(kind, 2)], "msg/s")
        else:
            cells[kind] = "—"
    bench.results.rows.append(
        Row(
            f"2 processes vs 1 on one queue (competing consumers, p100, {count:,} msgs)",
            cells,
            target="(documented, no target)",
        )
    )
