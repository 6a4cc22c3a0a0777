"""The results table: rows, samples, formatting, and the machine the run was on."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

import psutil  # type: ignore[import-untyped]

from rwbench.broker import api
from rwbench.consumers import LABELS
from rwbench.modes import Mode

T = TypeVar("T")


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    cells: dict[str, str]
    vs_raw: str = ""
    vs_faststream: str = ""
    target: str = ""
    result: str = ""


@dataclass
class Results:
    """Every row plus every sample, for the tables."""

    rows: list[Row] = field(default_factory=list)
    samples: list[tuple[str, str, list[float], str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def sample(self, scenario: str, kind: str, values: list[float], unit: str) -> None:
        self.samples.append((scenario, kind, values, unit))


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def fmt_rate(value: float) -> str:
    return "—" if value != value else f"{value:,.0f} msg/s"


def ratio(a: float, b: float) -> float:
    return a / b if b and a == a and b == b else float("nan")


def fmt_ratio(value: float) -> str:
    return "—" if value != value else f"{value:.2f}x"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def rotated(items: Sequence[T], by: int) -> list[T]:
    """``items`` rotated left by ``by``, so each round starts with another consumer."""
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_description(load_at_start: str) -> list[str]:
    """Cores, CPU, Python, RabbitMQ, client library versions, load."""
    overview = api("GET", "overview")
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = ", ".join(
        f"{name} {package_version(name)}"
        for name in (
            "rabbitworker-host",
            "aio-pika",
            "aiormq",
            "faststream",
            "uvloop",
            "orjson",
            "loguru",
        )
    )
    return [
        f"- machine: {os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} "
        f"GiB, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        f"- RabbitMQ {overview.get('rabbitmq_version')} (Erlang {overview.get('erlang_version')}) "
        "on the same machine",
        f"- {packages}",
        f"- load average (1, 5, 15 min) at the start: {load_at_start}; at the end: "
        f"{load_average()} (the machine is shared: see the CPU-per-message rows)",
    ]


def render(results: Results, mode: Mode, elapsed: float, load_at_start: str) -> str:
    lines = [
        f"## rabbitworker benchmark ({mode.name} mode, {elapsed:.0f} s)",
        "",
        "| scenario | rabbitworker-host | raw aio-pika | FastStream | us/raw | us/FastStream "
        "| target | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results.rows:
        lines.append(
            f"| {row.scenario} | {row.cells.get('ours', '—')} | {row.cells.get('raw', '—')} "
            f"| {row.cells.get('faststream', '—')} | {row.vs_raw or '—'} "
            f"| {row.vs_faststream or '—'} | {row.target or '—'} | {row.result or '—'} |"
        )
    lines += ["", *machine_description(load_at_start), "", "Every sample (medians above):", ""]
    lines += ["| scenario | consumer | samples |", "| --- | --- | --- |"]
    for scenario, kind, values, unit in results.samples:
        shown = ", ".join(f"{v:.3f}" if unit == "s" else f"{v:,.0f}" for v in values)
        lines.append(f"| {scenario} | {LABELS[kind]} | {shown} {unit} |")
    if results.notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in results.notes)]
    return "\n".join(lines) + "\n"
