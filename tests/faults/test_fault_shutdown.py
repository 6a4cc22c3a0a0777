"""SIGTERM: in-flight handlers finish and are acked; a second SIGTERM, or a handler that
ignores cancellation, still ends the process in bounded time with nothing unfinished acked.

(SIGTERM during a broker outage is in test_fault_broker_restart.py.)
"""

from __future__ import annotations

import signal
import time

import pytest
from brokertools import AmqpClient
from faultkit import FaultRig, exit_code, fault_queue, publish_tasks, take_tally

pytestmark = [pytest.mark.faults, pytest.mark.broker]


async def test_sigterm_lets_slow_in_flight_handlers_finish_and_acks_them(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    host = await rig.start([fault_queue(prefetch_count=5)])
    published = await publish_tasks(amqp, "work", [f"s-{i}" for i in range(5)], gate="finish")
    await rig.wait_events("start", 5, alive=host)

    host.process.send_signal(signal.SIGTERM)
    await host.async_wait_for_log("SIGTERM received")
    rig.open_gate("finish")  # the handlers only finish after the signal
    assert await exit_code(host, within=20) == 0

    assert len(host.log_lines("ACKed message s-")) == 5
    tally = await take_tally(rig, amqp, published)
    tally.check(published=5, handled=5, dead_lettered=0, left=0)


async def test_a_second_sigterm_exits_at_once_and_acks_nothing_unfinished(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    host = await rig.start([fault_queue(prefetch_count=5)])  # default 30 s shutdown timeout
    done = await publish_tasks(amqp, "work", ["d-0", "d-1"])
    await rig.wait_events("end", 2, alive=host)
    unfinished = await publish_tasks(amqp, "work", ["u-0", "u-1", "u-2"], gate="never")
    await rig.wait_events("start", 5, alive=host)

    host.process.send_signal(signal.SIGTERM)
    await host.async_wait_for_log("SIGTERM received")
    started = time.monotonic()
    host.process.send_signal(signal.SIGTERM)
    assert await exit_code(host, within=20) == 0
    assert time.monotonic() - started < 8, "forced, not the 30 s shutdown timeout"

    tally = await take_tally(rig, amqp, done + unfinished)
    tally.check(published=5, handled=2, dead_lettered=0, left=3)
    assert tally.left == set(unfinished)


async def test_a_handler_that_ignores_cancellation_still_lets_the_process_exit(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    shutdown_timeout = 1.0
    host = await rig.start([fault_queue()], RABBITWORKER_SHUTDOWN_TIMEOUT=str(shutdown_timeout))
    published = await publish_tasks(amqp, "stubborn", ["stubborn"])
    await rig.wait_events("start", 1, alive=host)

    started = time.monotonic()
    host.process.send_signal(signal.SIGTERM)
    assert await exit_code(host, within=30) == 0
    took = time.monotonic() - started
    assert took < shutdown_timeout + 5, f"took {took:.1f} s\n{host.log}"
    assert "never retrieved" not in host.log

    assert rig.events("cancel-ignored"), "the handler was cancelled and carried on"
    tally = await take_tally(rig, amqp, published)
    tally.check(published=1, handled=0, dead_lettered=0, left=1)
