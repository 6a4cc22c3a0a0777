"""In-process dispatch cost: CPU per message of the host's path vs raw aio-pika, one process.

Each round pre-loads the queue, then runs ``python -m rwbench.inprocess ours`` and ``... raw``
(order rotated): the host's :class:`WorkerHost` or an aio-pika consumer inside one process on
asyncio's loop, stderr (with the host's per-message INFO lines) to a file. The figure is
``time.process_time()`` from the first handler call to the last ack, divided by the count.
"""

from __future__ import annotations

import json
import sys
from functools import partial

from rwbench.consumers import BENCH_DIR, run_process
from rwbench.report import Row, median, rotated, verdict
from rwbench.scenario import Bench

KINDS = ("ours", "raw")
LIMIT_US = 20.0


async def run(bench: Bench) -> None:
    """Rounds of one host drain and one raw drain, in-process, at prefetch 100."""
    queue = "bench.dispatch"
    count = bench.mode.dispatch_messages
    await bench.broker.declare([queue])
    bench.log(f"in-process dispatch cost, prefetch 100, {count:,} messages")
    cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
    env = {"PYTHONPATH": str(BENCH_DIR)}
    serial = 0

    async def measure(kind: str) -> float:
        nonlocal serial
        serial += 1
        await bench.broker.purge([queue])
        await bench.broker.publish(queue, count)
        name = f"dispatch-{serial:02d}-{kind}"
        command = [sys.executable, "-m", "rwbench.inprocess", kind, "--url", bench.broker.url]
        command += ["--queue", queue, "--count", str(count)]
        command += ["--log", str(bench.runner.workdir / f"{name}.log")]
        if bench.runner.profile_dir is not None:
            command += ["--cprofile", str(bench.runner.profile_dir / f"{name}.pstats")]
        output = await run_process(command, env)
        await bench.settle_queue(queue, f"dispatch {kind}")
        return float(json.loads(output.strip().splitlines()[-1])["cpu_us"])

    for round_ in range(bench.mode.dispatch_rounds):
        for kind in rotated(KINDS, round_):
            micros = await bench.attempt(f"dispatch {kind}", partial(measure, kind))
            cpu[kind].append(micros)
            bench.log(f"dispatch round {round_ + 1} {kind}: {micros:.1f} µs CPU/msg")
    for kind in KINDS:
        bench.results.sample("in-process CPU per message", kind, cpu[kind], "µs")
    ours, raw = median(cpu["ours"]), median(cpu["raw"])
    bench.results.rows.append(
        Row(
            f"in-process dispatch cost, CPU per message, INFO lines on, prefetch 100 "
            f"({count:,} msgs, asyncio loop)",
            {"ours": f"{ours:.1f} µs", "raw": f"{raw:.1f} µs"},
            f"{ours - raw:+.1f} µs",
            target=f"≤ {LIMIT_US:.0f} µs above raw",
            result=verdict(ours - raw <= LIMIT_US),
        )
    )
