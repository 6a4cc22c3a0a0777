"""What the host logs: a line per queue set up, lines per message naming the queue, and never
the AMQP password."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from urllib.parse import quote

import pytest
from brokertools import AmqpClient, Broker, HostProcess, closed_port

from rabbitworker.logs import secret_forms
from rabbitworker.settings import mask_url

QUEUES = [
    {"name": "probe.q", "routing_key": "probe"},
    {"name": "bulk.q", "routing_key": "bulk.key", "prefetch_count": 7},
]
#: The start of every line the host writes in its default (text) log format.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| [A-Z]+ +\| ")
PASSWORD = "s3cr3t-Pa55word-xyz"
#: Needs percent-encoding in a URL: masking must catch both spellings.
AWKWARD_PASSWORD = "p@ss/w0rd:Ab%c-xyz"
PASSWORDS = [
    pytest.param(PASSWORD, id="plain-password"),
    pytest.param(AWKWARD_PASSWORD, id="password-needing-url-encoding"),
]


def leaks(output: str, password: str) -> list[str]:
    """Lines showing the password, raw or percent-encoded."""
    forms = {password, quote(password, safe="")}
    return [line for line in output.splitlines() if any(form in line for form in forms)]


@pytest.mark.broker
def test_one_line_per_queue_set_up_names_queue_routing_key_prefetch_and_handlers(
    start_host: Callable[..., HostProcess],
) -> None:
    host = start_host(QUEUES)

    for name, routing_key, prefetch in [("probe.q", "probe", 1), ("bulk.q", "bulk.key", 7)]:
        assert [
            line
            for line in host.log_lines(f"[{name}] consuming")
            if f"'{routing_key}'" in line
            and f"prefetch {prefetch}" in line
            and "fail, work, work_sync" in line
        ], host.log


@pytest.mark.broker
async def test_each_log_record_is_exactly_one_line(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    host = start_host(QUEUES)

    await amqp.publish_work("probe", [1])
    await amqp.publish_work("probe", [2], task="fail")
    await host.async_wait_for_log("dead-lettered message m-2")
    assert await host.async_stop() == 0

    lines = host.log.splitlines()
    assert lines
    assert [line for line in lines if not LOG_LINE.match(line)] == []


@pytest.mark.broker
async def test_every_line_about_a_message_names_its_queue(
    start_host: Callable[..., HostProcess], amqp: AmqpClient
) -> None:
    host = start_host(QUEUES)

    await amqp.publish_work("bulk.key", [1])
    await amqp.publish_work("probe", [2], task="fail")
    await host.async_wait_for_log("ACKed message m-1")
    await host.async_wait_for_log("dead-lettered message m-2")

    assert host.log_lines("m-1")
    assert all("[bulk.q]" in line for line in host.log_lines("m-1"))
    assert host.log_lines("m-2")
    assert all("[probe.q]" in line for line in host.log_lines("m-2"))


@pytest.mark.broker
@pytest.mark.parametrize("password", PASSWORDS)
async def test_the_amqp_password_appears_in_no_log_line(
    broker: Broker, start_host: Callable[..., HostProcess], amqp: AmqpClient, password: str
) -> None:
    url = broker.create_user("rw-log-test", password)
    host = start_host(QUEUES, RABBITWORKER_AMQP_URL=url, RABBITWORKER_LOG_LEVEL="DEBUG")

    await amqp.publish_work("probe", [1])
    await amqp.publish_work("probe", [2], task="fail")
    await amqp.publish(b"not json", "probe", message_id="m-3")
    await host.async_wait_for_log("dead-lettered message m-3")
    assert await host.async_stop() == 0

    assert "rw-log-test:****@" in host.log, "the URL is logged, masked"
    assert leaks(host.log, password) == []


@pytest.mark.broker
def test_the_password_appears_in_no_log_line_when_the_broker_refuses_the_login(
    broker: Broker, run_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    broker.create_user("rw-log-test", "the-right-password")
    url = broker.url_for("rw-log-test", PASSWORD)

    result = run_cli("run", amqp_url=url)

    assert result.returncode != 0
    assert leaks(result.stdout + result.stderr, PASSWORD) == []


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_password_appears_in_no_log_line_when_the_broker_is_unreachable(
    run_cli: Callable[..., subprocess.CompletedProcess[str]], password: str
) -> None:
    url = f"amqp://rw:{quote(password, safe='')}@127.0.0.1:{closed_port()}/"

    result = run_cli("run", amqp_url=url, RABBITWORKER_LOG_LEVEL="DEBUG")

    assert result.returncode != 0
    assert "amqp://rw:****@127.0.0.1:" in result.stderr
    assert leaks(result.stdout + result.stderr, password) == []


# -- masking, pure -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:****@localhost:5672/"),
        ("amqps://u:p%40ss%2Fw@h/v", "amqps://u:****@h/v"),
        ("amqp://localhost/", "amqp://localhost/"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_a_password_with_url_special_characters_is_masked_in_both_spellings() -> None:
    forms = secret_forms("p@ss/w0rd:long")

    assert "p@ss/w0rd:long" in forms
    assert ":p%40ss%2Fw0rd%3Along@" in forms
