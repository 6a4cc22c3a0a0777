"""Benchmark rabbitworker-host against a raw aio-pika consumer and FastStream.

Run ``python bench/run.py [--quick]`` (or ``nox -s bench -- --quick``) with RabbitMQ and its
management API on 127.0.0.1. Everything happens in a throwaway vhost, deleted at the end.
bench/README.md says exactly what each scenario times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from rwbench import competing, dispatch, latency, mixed, publish, rss, startup, throughput
from rwbench.broker import Broker, wait_for_broker
from rwbench.consumers import KINDS, Runner
from rwbench.modes import FULL, QUICK, Mode
from rwbench.report import load_average, render
from rwbench.scenario import Bench

#: Every scenario, in the order a full run takes them.
SCENARIOS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "throughput": throughput.run,
    "dispatch": dispatch.run,
    "latency": latency.run,
    "mixed": mixed.run,
    "startup": startup.run,
    "rss": rss.run,
    "publish": publish.run,
    "competing": competing.run,
}


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
    parser.add_argument("--rounds", type=int, help="override the throughput and dispatch rounds")
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
    parser.add_argument(
        "--no-variants",
        action="store_true",
        help="leave out the host variants (metrics, JSON logs, asyncio loop) at prefetch 100",
    )
    parser.add_argument("--keep", action="store_true", help="keep the consumers' logs")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> tuple[str, bool]:
    """Run the scenarios; return the report and whether every scenario completed."""
    mode = QUICK if args.quick else FULL
    if args.rounds:
        mode = Mode(
            **{
                **mode.__dict__,
                "rounds": args.rounds,
                "rounds_low": args.rounds,
                "dispatch_rounds": args.rounds,
            }
        )
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
        bench.prefetches = [int(p) for p in args.prefetch.split(",")]
        bench.messages = args.messages
        bench.variants = not args.no_variants
        if host_env:
            bench.results.notes.append(
                f"rabbitworker-host ran with {host_env}, not the shipped default settings"
            )
        bench.log(f"vhost {broker.vhost}, logs in {workdir}, {mode.name} mode")
        complete = True
        for scenario in scenarios:
            try:
                await SCENARIOS[scenario](bench)
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
