"""What every scenario shares: the runner, the mode, retries after a broker restart, and the
drain-and-time loop that interleaves consumers round by round."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

import aio_pika
import aiormq

from rwbench.broker import BenchError, wait_for_broker
from rwbench.consumers import KINDS, LABELS, Runner
from rwbench.modes import Mode
from rwbench.report import Results, Row, fmt_rate, fmt_ratio, median, ratio, rotated, verdict

T = TypeVar("T")


class Bench:
    """The state of one run; each scenario module adds rows to :attr:`results`."""

    def __init__(self, runner: Runner, mode: Mode, kinds: Sequence[str]) -> None:
        self.runner = runner
        self.broker = runner.broker
        self.mode = mode
        self.kinds = list(kinds)
        self.results = Results()
        #: The throughput scenario's prefetch counts, message count override, host variants.
        self.prefetches: list[int] = [100, 10, 1]
        self.messages: int | None = None
        self.variants = True

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    async def attempt(self, label: str, step: Callable[[], Awaitable[T]]) -> T:
        """Run one measurement; if it failed because the shared broker went away (other
        sessions' fault tests restart it), wait for the broker and run it again."""
        for attempt in range(3):
            try:
                return await step()
            except (
                BenchError,
                aio_pika.exceptions.AMQPError,
                aiormq.exceptions.ChannelInvalidStateError,
                OSError,
                TimeoutError,
            ) as exc:
                if attempt == 2:
                    raise
                reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[-1]}"
                self.log(f"{label} failed ({reason}); waiting for the broker, then again")
                self.results.notes.append(f"{label}: measured again after {reason}")
                await asyncio.to_thread(wait_for_broker)
                await self.broker.reopen()
        raise AssertionError("unreachable")

    async def settle_queue(self, queue: str, label: str) -> None:
        """After a drain every message must be acked: the queue must be empty."""
        ready, _ = await self.broker.depth(queue)
        if ready:
            self.results.notes.append(f"{label}: {ready} message(s) were left unacked in {queue}")
            await self.broker.purge([queue])

    async def rates(
        self,
        queue: str,
        spec: str,
        count: int,
        rounds: int,
        label: str,
        kinds: Sequence[str] | None = None,
    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Pre-load ``count`` messages and drain them with each kind, ``rounds`` times.

        :returns: msg/s and consumer CPU µs per message, per kind, one value per round.
        """
        kinds = list(kinds or self.kinds)
        rates: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
        await self.broker.declare([queue])

        async def measure(kind: str) -> tuple[float, float]:
            await self.broker.purge([queue])
            await self.broker.publish(queue, count)
            tallies = await self.runner.drain(kind, spec, {queue: count}, f"{label}-{kind}")
            await self.settle_queue(queue, f"{label} {kind}")
            return tallies[queue].rate(count), tallies[queue].cpu_per_message() * 1e6

        for round_ in range(rounds):
            for kind in rotated(kinds, round_):
                rate, micros = await self.attempt(f"{label} {kind}", partial(measure, kind))
                rates[kind].append(rate)
                cpu[kind].append(micros)
                self.log(
                    f"{label} round {round_ + 1} {LABELS[kind]}: {rate:,.0f} msg/s, "
                    f"{micros:.0f} µs CPU/msg"
                )
        for kind in kinds:
            self.results.sample(label, kind, rates[kind], "msg/s")
            self.results.sample(f"{label} CPU per message", kind, cpu[kind], "µs")
        return rates, cpu

    def add_cpu_row(self, scenario: str, cpu: dict[str, list[float]]) -> None:
        """A row of consumer CPU per message; its ratios are theirs ÷ ours (> 1: we use less)."""
        ours, raw, fs = (median(cpu.get(kind, [])) for kind in KINDS)
        self.results.rows.append(
            Row(
                scenario,
                {
                    kind: "—" if value != value else f"{value:.0f} µs"
                    for kind, value in zip(KINDS, (ours, raw, fs), strict=True)
                },
                fmt_ratio(ratio(raw, ours)) + " (raw ÷ us)",
                fmt_ratio(ratio(fs, ours)) + " (FS ÷ us)",
                "(diagnostic: robust to other load on the machine)",
            )
        )

    def add_comparison(
        self,
        scenario: str,
        rates: dict[str, list[float]],
        target: str = "",
        check: Callable[[float, float], bool] | None = None,
    ) -> None:
        ours, raw, fs = (median(rates.get(kind, [])) for kind in KINDS)
        vs_raw, vs_fs = ratio(ours, raw), ratio(ours, fs)
        result = ""
        if check is not None:
            result = verdict(check(vs_raw, vs_fs)) if vs_raw == vs_raw else "—"
        self.results.rows.append(
            Row(
                scenario,
                {kind: fmt_rate(median(rates.get(kind, []))) for kind in KINDS},
                fmt_ratio(vs_raw),
                fmt_ratio(vs_fs),
                target,
                result,
            )
        )
