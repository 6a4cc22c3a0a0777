"""The rabbitworker plugin of the benchmark: the queues ``RWBENCH_*`` asks for, counted.

Only public API is used. A handler notes when the first message reached it; the
``rabbitworker_message_settled`` hook, which the host calls after the ack, counts.
"""

from __future__ import annotations

from collections.abc import Awaitable

from rabbitworker import Delivery, HostSettings, Outcome, QueueConfig, Settlement, hookimpl
from rabbitworker_bench.common import BenchQueue, Reporter, Tally, queues_from_env, wait_for_gate

_queues: list[BenchQueue] = []
_tallies: dict[str, Tally] = {}
_reporter: Reporter | None = None


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    """The queues named by ``RWBENCH_QUEUES`` and ``RWBENCH_GENERATED_QUEUES`` (none if unset)."""
    _queues[:] = queues_from_env()
    _tallies.clear()
    _tallies.update((queue.name, queue.tally) for queue in _queues)
    return [
        QueueConfig(
            name=queue.name,
            routing_key=queue.name,
            task_handlers=queue.handlers,
            prefetch_count=queue.prefetch,
        )
        for queue in _queues
    ]


@hookimpl
def rabbitworker_startup(settings: HostSettings) -> Awaitable[None] | None:
    """Start writing progress reports, then wait for ``RWBENCH_START_GATE`` if it is set."""
    global _reporter
    _reporter = Reporter(_queues)
    _reporter.start()
    return wait_for_gate()


@hookimpl
def rabbitworker_shutdown(settings: HostSettings) -> Awaitable[None] | None:
    """Write the final counts."""
    return _reporter.stop() if _reporter is not None else None


@hookimpl
def rabbitworker_message_settled(delivery: Delivery, outcome: Outcome) -> None:
    """Count an acknowledged message of a bench queue."""
    if outcome.settlement is Settlement.ACKED:
        tally = _tallies.get(delivery.queue)
        if tally is not None:
            tally.settled()
