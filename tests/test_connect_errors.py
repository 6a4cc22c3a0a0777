"""What a person sees when the broker URL is wrong, and that every command takes the
cluster's ``;``-separated node list: the host, ``check --broker``, the ``dlq`` commands,
``publish`` and the console's letters all try each node and say, per node, what failed and
what to do about it, with the password masked and no traceback."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from urllib.parse import quote

import pytest
from brokertools import AmqpClient, Broker, HostProcess, closed_port
from consoletools import Letter, fill_dlq, run_async
from opstools import DLQ, PROBE_Q, declare_like_the_host

import rabbitworker
from rabbitworker import dlq
from rabbitworker.broker import describe_connect_failure
from rabbitworker.console.letters import LetterFilter, page
from rabbitworker.events import DeadLetterReason

RunCli = Callable[..., subprocess.CompletedProcess[str]]

SECRET = "s3cret-pw"


def dead_node() -> str:
    return f"amqp://guest:{SECRET}@127.0.0.1:{closed_port()}/"


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.broker
@pytest.mark.parametrize(
    "command",
    [("check", "--broker"), ("dlq", "show"), ("publish", "work", "-k", "probe"), ("run",)],
    ids=["check", "dlq-show", "publish", "run"],
)
def test_an_unknown_vhost_is_named_with_how_to_create_it(
    run_cli: RunCli, broker: Broker, command: tuple[str, ...]
) -> None:
    url = broker.amqp_url.rsplit("/", 1)[0] + "/no-such-vhost"

    result = run_cli(*command, amqp_url=url, RABBITWORKER_PUBLISH_TIMEOUT="3")

    assert result.returncode != 0
    no_traceback(result)
    assert "virtual host 'no-such-vhost'" in result.stderr, result.stderr[-3000:]
    assert "rabbitmqctl add_vhost no-such-vhost" in result.stderr
    assert "Connection.Close object" not in result.stderr


@pytest.mark.broker
@pytest.mark.parametrize(
    ("scheme", "password", "said"),
    [
        ("amqp", SECRET, "refused user 'guest': check the user name and password"),
        ("amqps", "guest", "port 5672 does not speak TLS: use amqp://"),
    ],
    ids=["wrong-password", "tls-to-a-plain-port"],
)
def test_a_refused_login_or_tls_to_a_plain_port_says_so_and_never_shows_the_password(
    run_cli: RunCli, broker: Broker, scheme: str, password: str, said: str
) -> None:
    url = f"{scheme}://guest:{password}@127.0.0.1:5672/{quote(broker.vhost, safe='')}"

    result = run_cli("check", "--broker", amqp_url=url)

    assert result.returncode == 4
    no_traceback(result)
    assert said in result.stderr, result.stderr[-3000:]


def test_a_closed_port_says_nothing_listens_there(run_cli: RunCli) -> None:
    url = dead_node()

    result = run_cli("check", "--broker", amqp_url=url)

    assert result.returncode == 4
    no_traceback(result)
    assert f"cannot connect to amqp://guest:****@127.0.0.1:{url.split(':')[-1]}" in result.stderr
    assert "nothing accepts connections there" in result.stderr


def test_every_node_of_a_cluster_url_is_named_with_its_own_failure(run_cli: RunCli) -> None:
    first, second = dead_node(), dead_node()

    result = run_cli("check", "--broker", amqp_url=f"{first};{second}")

    assert result.returncode == 4
    no_traceback(result)
    line = next(line for line in result.stderr.splitlines() if "cannot connect" in line)
    assert "any of the 2 nodes" in line
    for url in (first, second):
        assert url.replace(SECRET, "****").rstrip("/") in line


@pytest.mark.broker
@pytest.mark.parametrize("order", ["dead-first", "dead-last"])
def test_check_broker_and_dlq_show_use_a_live_node_of_a_cluster_url(
    run_cli: RunCli, broker: Broker, order: str
) -> None:
    run_async(declare_like_the_host(broker.amqp_url, [PROBE_Q]))
    nodes = [dead_node(), broker.amqp_url]
    url = ";".join(nodes if order == "dead-first" else reversed(nodes))

    checked = run_cli("check", "--broker", queues=[PROBE_Q], amqp_url=url)
    shown = run_cli("dlq", "show", amqp_url=url)

    no_traceback(checked)
    no_traceback(shown)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert shown.returncode == 0, shown.stderr[-3000:]


@pytest.mark.broker
async def test_a_host_and_publish_task_skip_a_dead_node_of_a_cluster_url(
    start_host: Callable[..., HostProcess],
    amqp_url: str,
    amqp: AmqpClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"{dead_node()};{amqp_url};{dead_node()}"
    monkeypatch.setenv("RABBITWORKER_AMQP_URL", url)
    host = start_host(RABBITWORKER_AMQP_URL=url)

    for index in range(5):
        await rabbitworker.publish_task(
            {"task": "work", "payload": {"id": index}}, "probe", message_id=f"m-{index}"
        )
    await host.wait_for_events("end", 5)
    await rabbitworker.close_publishers()

    assert sorted(e["id"] for e in host.events("end")) == list(range(5))
    assert await amqp.ready("probe.q") == 0
    assert await host.async_stop() == 0
    assert SECRET not in host.log


@pytest.mark.broker
def test_the_consoles_letters_and_the_dlq_functions_use_a_live_node_of_a_cluster_url(
    broker: Broker,
) -> None:
    run_async(declare_like_the_host(broker.amqp_url, [PROBE_Q]))
    run_async(
        fill_dlq(
            broker.amqp_url,
            [
                Letter(f"m-{i}", "probe.q", "work", {"n": i}, reason=DeadLetterReason.HANDLER_ERROR)
                for i in range(3)
            ],
        )
    )
    url = f"{dead_node()};{broker.amqp_url}"

    shown = run_async(page(url, DLQ, LetterFilter(), offset=0, limit=10))
    letters = run_async(dlq.show(url, DLQ))

    assert [row["message_id"] for row in shown.letters] == ["m-0", "m-1", "m-2"]
    assert [letter.message_id for letter in letters] == ["m-0", "m-1", "m-2"]


# -- the hints, for failures this machine's broker cannot produce ---------------------------


def test_a_tls_connection_reset_without_a_client_certificate_suggests_one() -> None:
    said = describe_connect_failure(
        "amqps://u:pw@h:5671/v", ConnectionResetError(104, "Connection reset by peer")
    )

    assert said.startswith("amqps://u:****@h:5671/v: ConnectionResetError")
    assert "client certificate" in said
    assert "certfile=" in said
    assert "keyfile=" in said
    assert "pw" not in said.replace("****", "")


def test_a_tls_reset_with_a_client_certificate_does_not_suggest_adding_one() -> None:
    said = describe_connect_failure(
        "amqps://u:pw@h:5671/v?certfile=/c.pem&keyfile=/c.key",
        ConnectionResetError(104, "Connection reset by peer"),
    )

    assert "add certfile" not in said


def test_an_untrusted_broker_certificate_suggests_naming_its_ca() -> None:
    import ssl

    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] self-signed")

    said = describe_connect_failure("amqps://u:pw@h:5671/v", error)

    assert "cafile=" in said
