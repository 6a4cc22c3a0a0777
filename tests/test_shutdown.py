"""SIGTERM and SIGINT: stop taking messages, let those in flight finish and be acked, exit 0.

What cannot finish within RABBITWORKER_SHUTDOWN_TIMEOUT stays unacknowledged, so the broker
delivers it again: nothing is lost.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from brokertools import AmqpClient, HostProcess

pytestmark = pytest.mark.broker

STOP_SIGNALS = [
    pytest.param(signal.SIGTERM, id="SIGTERM"),
    pytest.param(signal.SIGINT, id="SIGINT"),
]


@pytest.mark.parametrize(
    ("task", "sig"),
    [
        pytest.param("work", signal.SIGTERM, id="async-def-SIGTERM"),
        pytest.param("work_sync", signal.SIGTERM, id="plain-def-SIGTERM"),
        pytest.param("work", signal.SIGINT, id="async-def-SIGINT"),
    ],
)
async def test_in_flight_messages_finish_and_are_acked_before_a_clean_exit(
    start_host: Callable[..., HostProcess], amqp: AmqpClient, task: str, sig: signal.Signals
) -> None:
    host = start_host([{"name": "probe.q", "routing_key": "probe", "prefetch_count": 3}])
    await amqp.publish_work("probe", range(3), task=task, sleep=0.5)
    await host.wait_for_events("start", 3)

    assert await host.async_stop(sig) == 0

    assert sorted(e["id"] for e in host.events("end")) == [0, 1, 2]
    assert len(host.log_lines("ACKed message")) == 3
    assert await amqp.ready("probe.q") == 0, "acked, so nothing comes back after the exit"


@pytest.mark.parametrize("sig", STOP_SIGNALS)
async def test_after_the_signal_no_new_message_is_taken(
    start_host: Callable[..., HostProcess],
    amqp: AmqpClient,
    sig: signal.Signals,
    tmp_path: Path,
) -> None:
    host = start_host([{"name": "probe.q", "routing_key": "probe", "prefetch_count": 2}])
    # The two taken wait for the gate, opened only once the host stopped consuming: none of
    # them is acked (making room for a third) before the signal, however slow the test is.
    gate = tmp_path / "gate"
    await amqp.publish_work("probe", range(5), sleep=0.2, gate=gate)
    await host.wait_for_events("start", 2)

    host.process.send_signal(sig)
    await host.async_wait_for_log("waiting for 2 in-flight message")
    gate.touch()
    assert await host.async_wait_exit() == 0  # one signal: a second one stops at once

    assert sorted(e["id"] for e in host.events("start")) == [0, 1]
    assert await amqp.ready("probe.q") == 3


async def test_messages_published_while_draining_are_not_taken_even_with_prefetch_to_spare(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    host = start_host([{"name": "probe.q", "routing_key": "probe", "prefetch_count": 5}])
    await amqp.publish_work("probe", [1], sleep=1.0)
    await host.wait_for_events("start", 1)
    host.process.send_signal(signal.SIGTERM)
    await host.async_wait_for_log("waiting for 1 in-flight message")

    await amqp.publish_work("probe", [2, 3, 4])

    assert await host.async_wait_exit() == 0
    assert [e["id"] for e in host.events("start")] == [1]
    assert await amqp.ready("probe.q") == 3


async def test_a_clean_stop_logs_no_error(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    host = start_host([{"name": "probe.q", "routing_key": "probe"}])
    await amqp.publish_work("probe", [1], sleep=0.3)
    await host.wait_for_events("start", 1)

    assert await host.async_stop() == 0

    assert host.log_lines("stopped")
    assert not host.log_lines("ERROR")
    assert "Traceback" not in host.log


@pytest.mark.parametrize(
    ("task", "sig"),
    [
        pytest.param("work", signal.SIGTERM, id="async-def-SIGTERM"),
        pytest.param("work_sync", signal.SIGTERM, id="plain-def-SIGTERM"),
        pytest.param("work", signal.SIGINT, id="async-def-SIGINT"),
    ],
)
async def test_a_handler_outlasting_the_shutdown_timeout_is_left_for_redelivery(
    start_host: Callable[..., HostProcess],
    amqp: AmqpClient,
    task: str,
    sig: signal.Signals,
) -> None:
    host = start_host(
        [{"name": "probe.q", "routing_key": "probe"}], RABBITWORKER_SHUTDOWN_TIMEOUT="0.5"
    )
    await amqp.publish_work("probe", [1], task=task, sleep=60)
    await host.wait_for_events("start", 1)

    started = time.monotonic()
    assert await host.async_stop(sig, within=15) == 0
    assert time.monotonic() - started < 8, "bounded by the shutdown timeout, not the handler"

    assert host.events("end") == []
    [left] = await amqp.take_all("probe.q")
    assert left.message_id == "m-1"
    assert left.redelivered, "it was delivered and never acknowledged"


async def test_a_second_signal_stops_at_once(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    host = start_host([{"name": "probe.q", "routing_key": "probe"}])
    await amqp.publish_work("probe", [1], sleep=60)
    await host.wait_for_events("start", 1)
    host.process.send_signal(signal.SIGTERM)
    await host.async_wait_for_log("SIGTERM received")

    started = time.monotonic()
    assert await host.async_stop(signal.SIGTERM, within=15) == 0
    assert time.monotonic() - started < 8, "not the default 30 s shutdown timeout"

    assert await amqp.ready("probe.q") == 1
