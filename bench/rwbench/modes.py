"""How much work each scenario does: the full run and ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """How much work each scenario does."""

    name: str
    messages: int
    messages_p1: int
    rounds: int
    rounds_low: int
    latency_messages: int
    latency_rounds: int
    mixed_fast: int
    mixed_backlog: tuple[int, int]
    mixed_rounds: int
    startup_rounds: int
    rss_small: int
    rss_large: int
    rss_idle_wait: float
    rss_kinds: tuple[str, ...]
    publish_count: int
    publish_rounds: int
    competing_messages: int
    competing_rounds: int
    competing_kinds: tuple[str, ...]
    dispatch_messages: int
    dispatch_rounds: int


FULL = Mode(
    "full",
    messages=20_000,
    messages_p1=5_000,
    rounds=5,
    rounds_low=3,
    latency_messages=1_000,
    latency_rounds=2,
    mixed_fast=10_000,
    mixed_backlog=(2_000, 200),
    mixed_rounds=2,
    startup_rounds=3,
    rss_small=20_000,
    rss_large=200_000,
    rss_idle_wait=2.0,
    rss_kinds=("ours", "raw"),
    publish_count=10_000,
    publish_rounds=3,
    competing_messages=20_000,
    competing_rounds=2,
    competing_kinds=("ours", "raw"),
    dispatch_messages=20_000,
    dispatch_rounds=5,
)
QUICK = Mode(
    "quick",
    messages=4_000,
    messages_p1=1_500,
    rounds=2,
    rounds_low=1,
    latency_messages=200,
    latency_rounds=1,
    mixed_fast=2_000,
    mixed_backlog=(600, 60),
    mixed_rounds=1,
    startup_rounds=1,
    rss_small=2_000,
    rss_large=10_000,
    rss_idle_wait=0.6,
    rss_kinds=("ours", "raw", "faststream"),
    publish_count=5_000,
    publish_rounds=1,
    competing_messages=4_000,
    competing_rounds=1,
    competing_kinds=("ours",),
    dispatch_messages=4_000,
    dispatch_rounds=2,
)
