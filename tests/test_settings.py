"""Settings come from ``RABBITWORKER_*`` environment variables (pure unit tests)."""

from __future__ import annotations

import os

import pytest

from rabbitworker import HostSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("RABBITWORKER_"):
            monkeypatch.delenv(name)


def test_the_default_broker_is_guest_on_localhost() -> None:
    assert HostSettings().amqp_url == "amqp://guest:guest@localhost:5672/"


def test_the_default_shutdown_timeout_is_30_seconds() -> None:
    assert HostSettings().shutdown_timeout == 30


def test_rabbitworker_amqp_url_sets_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITWORKER_AMQP_URL", "amqp://u:p@broker.example:5673/jobs")

    assert HostSettings().amqp_url == "amqp://u:p@broker.example:5673/jobs"


def test_rabbitworker_shutdown_timeout_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITWORKER_SHUTDOWN_TIMEOUT", "2.5")

    assert HostSettings().shutdown_timeout == 2.5


def test_the_masked_url_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITWORKER_AMQP_URL", "amqp://u:hunter22@broker:5672/jobs")

    assert HostSettings().masked_amqp_url == "amqp://u:****@broker:5672/jobs"


def test_plugins_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITWORKER_PLUGINS", "first_plugin, second_plugin,")

    assert HostSettings().plugins == ["first_plugin", "second_plugin"]
