"""Throughput: a pre-loaded queue drained by each consumer, at prefetch 100, 10 and 1.

At prefetch 100 the host also runs with metrics on, with JSON logs and (when uvloop is
installed) on asyncio's loop, interleaved in the same rounds as the default host, so each
variant's ratio to the default row is measured side by side.
"""

from __future__ import annotations

from rwbench.consumers import HOST_VARIANTS, uvloop_installed
from rwbench.report import Row, fmt_rate, fmt_ratio, median, ratio, verdict
from rwbench.scenario import Bench

VARIANT_ROWS = {
    "ours-metrics": ("metrics on (`RABBITWORKER_METRICS_PORT` set)", 0.90),
    "ours-json": ("JSON logs (`RABBITWORKER_LOG_FORMAT=json`)", 0.90),
    "ours-asyncio": ("asyncio's loop (`RABBITWORKER_EVENT_LOOP=asyncio`)", None),
}


def variants(bench: Bench) -> list[str]:
    """The host variants drained beside the default host at prefetch 100."""
    if "ours" not in bench.kinds or not bench.variants:
        return []
    return [kind for kind in HOST_VARIANTS if kind != "ours-asyncio" or uvloop_installed()]


async def run(bench: Bench) -> None:
    """One block of rows per prefetch count (``--prefetch``, default 100, 10, 1)."""
    for prefetch in bench.prefetches:
        count = bench.messages or (bench.mode.messages_p1 if prefetch == 1 else bench.mode.messages)
        queue = f"bench.p{prefetch}"
        extra = variants(bench) if prefetch == 100 else []
        bench.log(f"throughput, prefetch {prefetch}, {count} messages")
        rounds = bench.mode.rounds if prefetch == 100 else bench.mode.rounds_low
        rates, cpu = await bench.rates(
            queue,
            f"{queue}:{prefetch}:noop",
            count,
            rounds,
            f"p{prefetch}",
            kinds=[*bench.kinds, *extra],
        )
        loop = "uvloop" if uvloop_installed() else "asyncio"
        scenario = (
            f"throughput, prefetch {prefetch}, no-op async handler ({count:,} msgs; host on {loop})"
        )
        if prefetch == 100:
            bench.add_comparison(
                scenario,
                rates,
                "≥ 1.2x raw, ≥ 2.0x FastStream",
                lambda r, f: r >= 1.2 and f >= 2.0,
            )
        else:
            bench.add_comparison(scenario, rates, "≥ 1.0x raw", lambda r, _f: r >= 1.0)
        for kind in extra:
            add_variant_row(bench, kind, rates)
        bench.add_cpu_row(f"… consumer CPU per message, prefetch {prefetch}", cpu)
        for kind in extra:
            ours_cpu, variant_cpu = median(cpu["ours"]), median(cpu[kind])
            bench.results.rows.append(
                Row(
                    f"… CPU per message, {VARIANT_ROWS[kind][0]}",
                    {"ours": f"{variant_cpu:.0f} µs ({variant_cpu - ours_cpu:+.0f} µs)"},
                    target="(diagnostic)",
                )
            )


def add_variant_row(bench: Bench, kind: str, rates: dict[str, list[float]]) -> None:
    """A host variant's rate, its ratios to raw and FastStream, and to the default host."""
    what, floor = VARIANT_ROWS[kind]
    variant = median(rates[kind])
    default = median(rates["ours"])
    share = ratio(variant, default)
    if floor is None:
        target, result = "(documented)", f"{fmt_ratio(share)} default host"
    else:
        target = "within 10 % of the default host"
        result = f"{fmt_ratio(share)} default host: {verdict(share >= floor)}"
    bench.results.rows.append(
        Row(
            f"… the same, host with {what}",
            {"ours": fmt_rate(variant)},
            fmt_ratio(ratio(variant, median(rates.get("raw", [])))),
            fmt_ratio(ratio(variant, median(rates.get("faststream", [])))),
            target,
            result,
        )
    )
