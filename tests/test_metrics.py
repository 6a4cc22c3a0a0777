"""The built-in metrics plugin: ``/metrics`` counts exactly what the host did, ``/healthz``
and ``/readyz`` answer like Kubernetes probes expect."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from brokertools import AmqpClient, HostProcess, async_wait_for, closed_port, wait_for
from opstools import (
    DLQ,
    PROBE_Q,
    Samples,
    broker_stopped,
    http_status,
    sample,
    scrape,
    send,
    total,
    wait_ready,
)

pytestmark = pytest.mark.broker

StartHost = Callable[..., HostProcess]

#: Failed messages of this queue are retried once, after 50 ms, then dead-lettered.
RETRY_Q = {"name": "retry.q", "routing_key": "retry", "max_retries": 1, "retry_delays": [0.05]}
DURATION_COUNT = "rabbitworker_handler_duration_seconds_count"


def start_with_metrics(start_host: StartHost, queues: list[dict[str, object]]) -> int:
    port = closed_port()
    start_host(queues, RABBITWORKER_METRICS_PORT=str(port))
    return port


async def test_metrics_count_exactly_the_acked_dead_lettered_and_retried_messages(
    start_host: StartHost, amqp: AmqpClient
) -> None:
    port = start_with_metrics(start_host, [PROBE_Q, RETRY_Q])
    ok, failing, retried = 4, 3, 2
    for i in range(ok):
        await send(amqp, "probe", f"ok-{i}", "work")
    for i in range(failing):
        await send(amqp, "probe", f"bad-{i}", "fail")
    for i in range(retried):
        await send(amqp, "retry", f"again-{i}", "fail")
    # Every attempt settles once: the retried messages twice (retried, then dead-lettered).
    settled = ok + failing + 2 * retried
    await wait_ready(amqp, DLQ, failing + retried)

    def all_settled() -> Samples | None:
        samples = scrape(port)
        return samples if total(samples, DURATION_COUNT) >= settled else None

    samples = await async_wait_for(all_settled, message=f"{settled} settled messages")

    def count(name: str, queue: str, task: str, **labels: str) -> float:
        return sample(
            samples, f"rabbitworker_messages_{name}_total", queue=queue, task=task, **labels
        )

    assert count("received", "probe.q", "work") == ok
    assert count("acked", "probe.q", "work") == ok
    assert count("received", "probe.q", "fail") == failing
    assert count("dead_lettered", "probe.q", "fail", reason="handler-error") == failing
    assert count("received", "retry.q", "fail") == 2 * retried
    assert count("retried", "retry.q", "fail", reason="handler-error") == retried
    assert count("dead_lettered", "retry.q", "fail", reason="handler-error") == retried
    assert total(samples, "rabbitworker_messages_acked_total") == ok
    assert total(samples, "rabbitworker_messages_retried_total") == retried
    assert total(samples, "rabbitworker_messages_dead_lettered_total") == failing + retried
    assert sample(samples, DURATION_COUNT, queue="probe.q", task="work") == ok
    assert sample(samples, DURATION_COUNT, queue="probe.q", task="fail") == failing
    assert sample(samples, DURATION_COUNT, queue="retry.q", task="fail") == 2 * retried
    assert total(samples, DURATION_COUNT) == settled


async def test_metrics_in_flight_returns_to_zero_once_the_messages_are_handled(
    start_host: StartHost, amqp: AmqpClient, tmp_path: Path
) -> None:
    port = start_with_metrics(start_host, [{**PROBE_Q, "prefetch_count": 2}])
    # Held in flight until the gauge was seen at 2 (a 0.5 s sleep could be over before a
    # slow scrape looked).
    gate = tmp_path / "gate"
    await send(amqp, "probe", "slow-1", "work", sleep=0.1, gate=str(gate))
    await send(amqp, "probe", "slow-2", "work", sleep=0.1, gate=str(gate))

    def in_flight() -> float:
        return sample(scrape(port), "rabbitworker_messages_in_flight", queue="probe.q")

    def acked() -> float:
        return sample(
            scrape(port), "rabbitworker_messages_acked_total", queue="probe.q", task="work"
        )

    await async_wait_for(lambda: in_flight() == 2, message="2 messages in flight")
    gate.touch()
    await async_wait_for(lambda: acked() == 2, message="2 acked messages")

    assert in_flight() == 0


def test_metrics_show_the_connection_and_each_queue_consuming(start_host: StartHost) -> None:
    port = start_with_metrics(start_host, [PROBE_Q, RETRY_Q])

    samples = scrape(port)

    assert sample(samples, "rabbitworker_connected") == 1
    assert sample(samples, "rabbitworker_queue_consuming", queue="probe.q") == 1
    assert sample(samples, "rabbitworker_queue_consuming", queue="retry.q") == 1


def test_healthz_answers_200_while_the_host_runs(start_host: StartHost) -> None:
    port = start_with_metrics(start_host, [PROBE_Q])

    assert http_status(port, "/healthz") == 200


def test_readyz_answers_200_while_consuming_every_queue(start_host: StartHost) -> None:
    port = start_with_metrics(start_host, [PROBE_Q, RETRY_Q])

    assert http_status(port, "/readyz") == 200


def test_no_metrics_port_is_opened_unless_rabbitworker_metrics_port_is_set(
    start_host: StartHost,
) -> None:
    host = start_host([PROBE_Q])

    assert "metrics on" not in host.log
    assert "rabbitworker.metrics" not in host.log


@pytest.mark.faults
def test_readyz_turns_503_while_the_broker_is_down_and_200_once_it_is_back(
    start_host: StartHost,
) -> None:
    port = closed_port()
    start_host(
        [PROBE_Q],
        RABBITWORKER_METRICS_PORT=str(port),
        RABBITWORKER_RECONNECT_INTERVAL="0.5",
        RABBITWORKER_RECONNECT_INTERVAL_MAX="1",
    )
    wait_for(lambda: http_status(port, "/readyz") == 200, message="/readyz 200")

    with broker_stopped():
        wait_for(lambda: http_status(port, "/readyz") == 503, timeout=20, message="/readyz 503")
        assert http_status(port, "/healthz") == 200

    wait_for(lambda: http_status(port, "/readyz") == 200, timeout=30, message="/readyz 200 again")
