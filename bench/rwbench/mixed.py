"""Three queues: a fast prefetch-20 queue alone, then beside two slow queues in one process."""

from __future__ import annotations

from functools import partial

from rwbench.consumers import KINDS, LABELS
from rwbench.report import Row, fmt_rate, fmt_ratio, median, ratio, rotated
from rwbench.scenario import Bench


async def run(bench: Bench) -> None:
    fast, medium, slow = "bench.mix.fast", "bench.mix.medium", "bench.mix.slow"
    count = bench.mode.mixed_fast
    spec_alone = f"{fast}:20:noop"
    spec_mixed = f"{spec_alone},{medium}:10:async_sleep,{slow}:1:sync_sleep"
    backlog = dict(zip((medium, slow), bench.mode.mixed_backlog, strict=True))
    await bench.broker.declare([fast, medium, slow])
    alone: dict[str, list[float]] = {kind: [] for kind in bench.kinds}
    together: dict[str, list[float]] = {kind: [] for kind in bench.kinds}
    slow_rates: dict[str, list[float]] = {kind: [] for kind in bench.kinds}
    bench.log(f"three queues: fast p20 ({count} msgs) alone, then beside p10 and p1 sleepers")

    async def measure_alone(kind: str) -> float:
        await bench.broker.purge([fast, medium, slow])
        await bench.broker.publish(fast, count)
        tallies = await bench.runner.drain(kind, spec_alone, {fast: count}, f"alone-{kind}")
        await bench.settle_queue(fast, f"mixed alone {kind}")
        return tallies[fast].rate(count)

    async def measure_together(kind: str) -> tuple[float, float]:
        await bench.broker.purge([fast, medium, slow])
        for queue, backlog_count in backlog.items():
            await bench.broker.publish(queue, backlog_count)
        await bench.broker.publish(fast, count)
        tallies = await bench.runner.drain(kind, spec_mixed, {fast: count}, f"mixed-{kind}")
        return tallies[fast].rate(count), tallies[slow].rate()

    for round_ in range(bench.mode.mixed_rounds):
        for kind in rotated(bench.kinds, round_):
            alone[kind].append(await bench.attempt(f"alone {kind}", partial(measure_alone, kind)))
            fast_rate, slow_rate = await bench.attempt(
                f"mixed {kind}", partial(measure_together, kind)
            )
            together[kind].append(fast_rate)
            slow_rates[kind].append(slow_rate)
            bench.log(
                f"mixed round {round_ + 1} {LABELS[kind]}: fast alone "
                f"{alone[kind][-1]:,.0f}, beside sleepers {together[kind][-1]:,.0f} msg/s, "
                f"slow p1 queue {slow_rates[kind][-1]:.1f} msg/s"
            )
    await bench.broker.purge([fast, medium, slow])
    for kind in bench.kinds:
        bench.results.sample("fast p20 alone", kind, alone[kind], "msg/s")
        bench.results.sample("fast p20 beside sleepers", kind, together[kind], "msg/s")
        bench.results.sample("slow p1 sync queue meanwhile", kind, slow_rates[kind], "msg/s")
    cells = {}
    for kind in KINDS:
        if kind in bench.kinds:
            share = ratio(median(together[kind]), median(alone[kind]))
            cells[kind] = f"{fmt_rate(median(together[kind]))} ({fmt_ratio(share)} alone)"
        else:
            cells[kind] = "—"
    ours_share = ratio(median(together.get("ours", [])), median(alone.get("ours", [])))
    ratios = {k: median(together[k]) for k in bench.kinds}
    bench.results.rows.append(
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
    bench.results.rows.append(
        Row(
            "… meanwhile the p1 sync-sleep queue (ideal 20 msg/s)",
            {
                kind: f"{median(slow_rates[kind]):.1f} msg/s" if kind in bench.kinds else "—"
                for kind in KINDS
            },
            target="not starved",
        )
    )
