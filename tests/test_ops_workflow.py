"""The README's "Operating rabbitworker" walk-through, command for command, with the
installed ``reports`` plugin: a report fails because its data directory is unusable; the
operator finds why, fixes it, replays the message and sees it counted as acked."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from brokertools import HOST_SCRIPT, AmqpClient, Broker, HostProcess, async_wait_for, closed_port
from opstools import DLQ, sample, scrape, table_cells, wait_ready

pytestmark = pytest.mark.broker

RunCli = Callable[..., subprocess.CompletedProcess[str]]

REPORT = {
    "report_id": "sales-2024-05",
    "columns": ["region", "total"],
    "rows": [{"region": "north", "total": 3}, {"region": "south", "total": 4}],
    "totals": ["total"],
}


def table_row(table: str, *texts: str) -> str:
    """The one line of a table that contains every one of ``texts``."""
    [row] = [line for line in table.splitlines() if all(text in line for text in texts)]
    return row


async def test_an_operator_finds_why_a_message_failed_fixes_it_replays_it_and_sees_it_acked(
    start_host: Callable[..., HostProcess],
    run_cli: RunCli,
    amqp: AmqpClient,
    broker: Broker,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "reports-data"
    data_dir.write_text("a file where the reports plugin wants its directory")
    port = closed_port()
    deployment = {
        "RABBITWORKER_DISABLE_PLUGIN_AUTOLOAD": "0",
        "RABBITWORKER_PLUGINS": "",
        "RABBITWORKER_ENABLED_PLUGINS": "reports",
        "RABBITWORKER_REPORTS_DATA_DIR": str(data_dir),
    }
    start_host(command=(HOST_SCRIPT,), RABBITWORKER_METRICS_PORT=str(port), **deployment)

    async def rabbitworker_host(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            run_cli, *args, command=(HOST_SCRIPT,), amqp_url=broker.amqp_url, **deployment
        )

    def counter(name: str, **labels: str) -> float:
        return sample(
            scrape(port),
            f"rabbitworker_messages_{name}_total",
            queue="reports.queue",
            task="generate_report",
            **labels,
        )

    payload = tmp_path / "report.json"
    payload.write_text(json.dumps(REPORT))
    published = await rabbitworker_host(
        "publish", "generate_report", "--routing-key", "reports", "--payload-file", str(payload)
    )
    assert published.returncode == 0, published.stderr
    message_id = published.stdout.strip()
    await wait_ready(amqp, DLQ, 1)

    # 1. Something failed: the DLQ is not empty, and the counters say so.
    checked = await rabbitworker_host("check", "--broker")
    assert checked.returncode == 0, checked.stderr
    assert table_cells(checked.stdout, "tasks.dlq")[:5] == ["queue", "tasks.dlq", "dlq", "ok", "1"]
    await async_wait_for(
        lambda: counter("dead_lettered", reason="handler-error") == 1, message="1 dead letter"
    )

    # 2. Why: the dead letter names its queue, task, reason and error.
    shown = await rabbitworker_host("dlq", "show", "tasks.dlq")
    row = table_row(shown.stdout, message_id)
    for text in ("generate_report", "reports.queue", "handler-error", "NotADirectoryError"):
        assert text in row

    # 3. Fix the cause.
    data_dir.unlink()

    # 4. Replay it to the queue it came from.
    replayed = await rabbitworker_host("dlq", "replay", "tasks.dlq", "--queue", "reports.queue")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1, left 0 (not selected), failed 0" in replayed.stdout

    # 5. Watch it counted: acked once, nothing new dead-lettered, the DLQ empty.
    await async_wait_for(lambda: counter("acked") == 1, message="the replayed message acked")
    assert counter("dead_lettered", reason="handler-error") == 1
    assert (data_dir / "reports" / "sales-2024-05.csv").exists()
    emptied = await rabbitworker_host("dlq", "show", "tasks.dlq")
    assert "tasks.dlq: 0 dead letter(s) shown" in emptied.stdout
