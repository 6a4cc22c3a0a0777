"""No setting error, log line or command output ever shows a password, with one broker URL or
several; settings nobody reads are pointed out, with the setting that was probably meant."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from urllib.parse import quote

import pytest
from brokertools import closed_port

from rabbitworker.settings import HostSettings, unknown_variables

FIRST = "first-Secret-pw1"
SECOND = "second-Secret-pw2"


def leaks(output: str, *passwords: str) -> list[str]:
    forms = {form for p in passwords for form in (p, quote(p, safe=""))}
    return [line for line in output.splitlines() if any(form in line for form in forms)]


def two_nodes(separator: str = ";") -> str:
    return separator.join(
        f"amqp://rw:{password}@127.0.0.1:{closed_port()}/v" for password in (FIRST, SECOND)
    )


def test_an_invalid_url_is_refused_without_echoing_it(
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = run_cli("queues", amqp_url=f"http://rw:{FIRST}@example.invalid:5672/")

    assert result.returncode == 3
    assert "RABBITWORKER_AMQP_URL" in result.stderr
    assert "amqp://" in result.stderr, "says what a valid one looks like"
    assert leaks(result.stdout + result.stderr, FIRST) == []


def test_comma_separated_urls_are_refused_saying_to_use_semicolons_without_a_password(
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = run_cli("queues", amqp_url=two_nodes(","))

    assert result.returncode == 3
    assert "';'" in result.stderr
    assert leaks(result.stdout + result.stderr, FIRST, SECOND) == []


def test_every_unreachable_node_is_named_masked_and_no_password_is_shown(
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = run_cli("run", amqp_url=two_nodes(), RABBITWORKER_LOG_LEVEL="DEBUG")

    assert result.returncode == 4
    assert result.stderr.count("amqp://rw:****@127.0.0.1:") >= 2, result.stderr
    assert leaks(result.stdout + result.stderr, FIRST, SECOND) == []


def test_a_misspelled_setting_gets_a_warning_naming_the_one_meant(
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = run_cli("queues", RABBITWORKER_AMQP_URLS=two_nodes())

    assert result.returncode == 0
    assert "RABBITWORKER_AMQP_URLS is not a rabbitworker setting" in result.stderr
    assert "did you mean RABBITWORKER_AMQP_URL?" in result.stderr
    assert leaks(result.stdout + result.stderr, FIRST, SECOND) == []


def test_plugin_settings_and_the_config_file_variable_are_not_unknown() -> None:
    environ = {
        "RABBITWORKER_AMQP_URL": "amqp://localhost/",
        "RABBITWORKER_CONFIG_FILE": "x.toml",
        "RABBITWORKER_REPORTS_DATA_DIR": "/tmp",
        "RABBITWORKER_SHUTDOWN_TIMOUT": "3",
        "OTHER": "1",
    }

    assert unknown_variables(environ, ["reports"]) == [
        ("RABBITWORKER_SHUTDOWN_TIMOUT", "RABBITWORKER_SHUTDOWN_TIMEOUT")
    ]


def test_several_nodes_are_one_setting_split_on_semicolons() -> None:
    settings = HostSettings(amqp_url=f"amqp://a:{FIRST}@h1/v ; amqp://b:{SECOND}@h2/v;")

    assert settings.amqp_urls == [f"amqp://a:{FIRST}@h1/v", f"amqp://b:{SECOND}@h2/v"]
    assert settings.masked_amqp_url == "amqp://a:****@h1/v;amqp://b:****@h2/v"


@pytest.mark.parametrize("bad", ["amqp://h1/;ftp://h2/", ";", "nonsense"])
def test_each_node_url_must_be_amqp_or_amqps(bad: str) -> None:
    with pytest.raises(ValueError, match="amqp://"):
        HostSettings(amqp_url=bad)
