"""The in-process fixture's injected broker faults give the production outcome.

``await worker.push(..., fault=...)`` runs the host's real consumer, policy and settler with
the fault in place of a broker: a copy that cannot be stored leaves its original
unacknowledged, a channel or connection lost under a running handler cancels it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import rabbitworker
from rabbitworker import QueueConfig
from rabbitworker.testing import BrokerFault, WorkerUnderTest

QUEUE = "faulty.queue"


class FaultyPlugin:
    """One queue whose handlers succeed, fail, or wait until cancelled (and say so)."""

    def __init__(self, *, max_retries: int = 0) -> None:
        self.max_retries = max_retries
        self.cancelled = 0
        self.runs = 0

    async def work(self, message: dict[str, Any]) -> str:
        self.runs += 1
        return f"done {message['payload']['n']}"

    async def fail(self, message: dict[str, Any]) -> None:
        self.runs += 1
        raise ValueError("the mail server said no")

    async def hang(self, message: dict[str, Any]) -> None:
        self.runs += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def hang_then_return(self, message: dict[str, Any]) -> str:
        """Swallows the host's cancellation and returns as if it had finished."""
        self.runs += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
        return "pretends to be done"

    async def hang_then_fail(self, message: dict[str, Any]) -> None:
        """Turns the host's cancellation into an error of its own."""
        self.runs += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise ValueError("interrupted half way") from None

    @rabbitworker.hookimpl
    def rabbitworker_queues(self) -> list[QueueConfig]:
        return [
            QueueConfig(
                name=QUEUE,
                routing_key="faulty",
                task_handlers={
                    "work": self.work,
                    "fail": self.fail,
                    "hang": self.hang,
                    "hang_then_return": self.hang_then_return,
                    "hang_then_fail": self.hang_then_fail,
                },
                max_retries=self.max_retries,
                retry_delays=[0.01],
            )
        ]


async def _push(worker: WorkerUnderTest, task: str, fault: str | None) -> Any:
    # A fault that made the settler retry its copy for ever would hang here: bound it.
    async with asyncio.timeout(10):
        return await worker.push({"task": task, "payload": {"n": 1}}, queue=QUEUE, fault=fault)


@pytest.fixture
def plugin() -> FaultyPlugin:
    return FaultyPlugin()


async def test_a_successful_handler_without_a_fault_is_acked(
    rabbitworker_worker: Any, plugin: FaultyPlugin
) -> None:
    worker = await rabbitworker_worker(plugin)

    result = await _push(worker, "work", None)

    assert (result.settlement, result.result, result.attempts) == ("acked", "done 1", 1)


async def test_a_failing_handler_without_a_fault_is_dead_lettered(
    rabbitworker_worker: Any, plugin: FaultyPlugin
) -> None:
    worker = await rabbitworker_worker(plugin)

    result = await _push(worker, "fail", None)

    assert (result.settlement, result.reason) == ("dead-lettered", "handler-error")
    assert len(worker.dead_letters()) == 1


@pytest.mark.parametrize("fault", ["confirm-refused", "copy-unroutable"])
async def test_a_failing_handler_whose_dead_letter_cannot_be_stored_is_unsettled(
    rabbitworker_worker: Any, plugin: FaultyPlugin, fault: str
) -> None:
    worker = await rabbitworker_worker(plugin)

    result = await _push(worker, "fail", fault)

    assert result.settlement == "unsettled"
    assert plugin.runs == 1


@pytest.mark.parametrize("fault", ["confirm-refused", "copy-unroutable"])
async def test_a_dead_letter_that_cannot_be_stored_is_not_recorded(
    rabbitworker_worker: Any, plugin: FaultyPlugin, fault: str
) -> None:
    worker = await rabbitworker_worker(plugin)

    result = await _push(worker, "fail", fault)

    assert worker.dead_letters() == []
    assert result.headers == {}
    assert not result.dead_lettered


@pytest.mark.parametrize("fault", ["confirm-refused", "copy-unroutable"])
async def test_the_original_of_an_unstored_copy_stays_unacknowledged(
    rabbitworker_worker: Any, plugin: FaultyPlugin, fault: str
) -> None:
    worker = await rabbitworker_worker(plugin)
    channel = worker._channels[QUEUE]

    await _push(worker, "fail", fault)

    assert (len(channel.unacked), channel.acked, channel.rejected) == (1, set(), set())


@pytest.mark.parametrize("fault", ["confirm-refused", "copy-unroutable"])
async def test_a_retry_copy_that_cannot_be_stored_leaves_the_message_unsettled(
    rabbitworker_worker: Any, fault: str
) -> None:
    plugin = FaultyPlugin(max_retries=2)
    worker = await rabbitworker_worker(plugin)

    result = await _push(worker, "fail", fault)

    assert result.settlement == "unsettled"
    assert plugin.runs == 1, "no retry ran: its copy was never stored"


@pytest.mark.parametrize("fault", ["confirm-refused", "copy-unroutable"])
async def test_a_copy_fault_does_not_touch_a_successful_handler(
    rabbitworker_worker: Any, plugin: FaultyPlugin, fault: str
) -> None:
    worker = await rabbitworker_worker(plugin)

    result = await _push(worker, "work", fault)

    assert result.settlement == "acked"


@pytest.mark.parametrize("fault", ["confirm-refused", "copy-unroutable"])
async def test_a_copy_fault_lasts_for_its_own_push_only(
    rabbitworker_worker: Any, plugin: FaultyPlugin, fault: str
) -> None:
    worker = await rabbitworker_worker(plugin)
    await _push(worker, "fail", fault)

    after = await _push(worker, "fail", None)

    assert (after.settlement, after.reason) == ("dead-lettered", "handler-error")
    assert len(worker.dead_letters()) == 1


@pytest.mark.parametrize("fault", ["channel-closed", "connection-lost"])
async def test_a_handler_running_when_the_channel_goes_is_cancelled_and_unsettled(
    rabbitworker_worker: Any, plugin: FaultyPlugin, fault: str
) -> None:
    worker = await rabbitworker_worker(plugin)

    result = await _push(worker, "hang", fault)

    assert result.settlement == "unsettled"
    assert (plugin.runs, plugin.cancelled) == (1, 1)
    assert worker.dead_letters() == []


@pytest.mark.parametrize("fault", ["channel-closed", "connection-lost"])
async def test_a_handler_that_returns_after_the_channel_went_is_unsettled_not_acked(
    rabbitworker_worker: Any, plugin: FaultyPlugin, fault: str
) -> None:
    worker = await rabbitworker_worker(plugin)

    result = await _push(worker, "hang_then_return", fault)

    assert result.settlement == "unsettled"
    assert plugin.cancelled == 1


@pytest.mark.parametrize("fault", ["channel-closed", "connection-lost"])
async def test_a_handler_that_raises_after_the_channel_went_is_not_dead_lettered(
    rabbitworker_worker: Any, plugin: FaultyPlugin, fault: str
) -> None:
    worker = await rabbitworker_worker(plugin)

    result = await _push(worker, "hang_then_fail", fault)

    assert result.settlement == "unsettled"
    assert worker.dead_letters() == []


@pytest.mark.parametrize("fault", ["channel-closed", "connection-lost"])
async def test_the_worker_consumes_again_after_a_lost_channel(
    rabbitworker_worker: Any, plugin: FaultyPlugin, fault: str
) -> None:
    worker = await rabbitworker_worker(plugin)
    await _push(worker, "hang", fault)

    after = await _push(worker, "work", None)

    assert after.settlement == "acked"


def test_every_fault_is_documented_on_broker_fault() -> None:
    doc = BrokerFault.__doc__ or ""

    assert all(f"``{fault.value}``" in doc for fault in BrokerFault)
