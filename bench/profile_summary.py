"""Summarise py-spy ``--format raw`` profiles (collapsed stacks) of the host.

``python bench/profile_summary.py PROFILE.txt [--top 30]`` prints, in % of all samples:
the share of each library (by the file of the innermost Python frame), the functions with
the most self time, and the functions with the most inclusive time (each counted once per
stack). Native frames (``--native``) are kept but attributed to their library.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<location>[^()]*)\)$")
LIBRARIES = (
    "rabbitworker_bench",
    "rabbitworker",
    "loguru",
    "pluggy",
    "aio_pika",
    "aiormq",
    "pamqp",
    "orjson",
    "asyncio",
    "_asynciomodule",
    "selectors",
    "yarl",
    "multidict",
    "logging",
    "concurrent",
    "threading",
)


def parse(path: Path) -> list[tuple[list[str], int]]:
    """Stacks (outermost first) and their sample counts."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def library(frame: str) -> str:
    """The library a frame belongs to, from its file name."""
    match = FRAME.match(frame)
    location = match["location"] if match else frame
    for name in LIBRARIES:
        if f"{name}/" in location or location.startswith(f"{name}.") or name in location:
            return name
    if location.endswith(".so") or ".so." in location or location.startswith("0x"):
        return "native (libc, kernel, CPython)"
    return location.split("/")[0].split(":")[0] or "?"


def python_frame(stack: list[str]) -> str:
    """The innermost frame that is Python code (file.py), else the innermost frame."""
    for frame in reversed(stack):
        if ".py:" in frame:
            return frame
    return stack[-1]


def summarise(path: Path, top: int) -> str:
    stacks = parse(path)
    total = sum(count for _, count in stacks) or 1
    by_library: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks:
        by_library[library(python_frame(stack))] += count
        self_time[stack[-1]] += count
        for frame in set(stack):
            inclusive[frame] += count

    def table(title: str, counter: Counter[str], limit: int) -> list[str]:
        lines = [f"## {title}", ""]
        for name, count in counter.most_common(limit):
            lines.append(f"{100 * count / total:6.1f} %  {name}")
        return [*lines, ""]

    return "\n".join(
        [
            f"# {path.name}: {total} samples",
            "",
            *table("by library (innermost Python frame)", by_library, 20),
            *table("self time", self_time, top),
            *table("inclusive time", inclusive, top),
        ]
    )


def main() -> None:
    """Print the summary of each profile given."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profiles", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    for path in args.profiles:
        print(summarise(path, args.top))


if __name__ == "__main__":
    main()
