"""The plugin is installed and registered through its entry point, with its own settings."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import rabbitworker_analytics
from rabbitworker import HostSettings
from rabbitworker.plugins import HostPlugins
from rabbitworker_analytics import AnalyticsSettings

DISTRIBUTION = "rabbitworker-analytics"
CONTRACT_QUEUES = {("analytics.queue", "analytics", 20, ("track_event",))}


def test_the_entry_point_is_installed_by_its_distribution() -> None:
    (entry_point,) = entry_points(group="rabbitworker.queues", name="analytics")

    assert entry_point.value == "rabbitworker_analytics"
    assert entry_point.dist is not None
    assert entry_point.dist.name == DISTRIBUTION
    assert entry_point.load() is rabbitworker_analytics


def test_the_host_collects_exactly_the_contract_queue() -> None:
    plugins = HostPlugins.load(
        HostSettings(plugins=[], disable_plugin_autoload=False, disabled_plugins=[])
    )

    ours = [
        registration
        for registration in plugins.collect_queues()
        if registration.plugin.distribution == DISTRIBUTION
    ]

    assert {
        (r.config.name, r.config.routing_key, r.config.prefetch_count, tuple(r.config.tasks))
        for r in ours
    } == CONTRACT_QUEUES
    assert len(ours) == len(CONTRACT_QUEUES)
    assert {r.plugin.name for r in ours} == {"analytics"}
    (config,) = (r.config for r in ours)
    assert (config.exchange_name, config.dlx_exchange_name, config.dlq_name) == (
        "tasks",
        "tasks.dlx",
        "tasks.dlq",
    )


def test_track_event_is_a_plain_def_handler() -> None:
    (queue,) = rabbitworker_analytics.rabbitworker_queues()
    handler = queue.task_handlers["track_event"]

    assert callable(handler)
    assert not inspect.iscoroutinefunction(handler)


def test_startup_creates_the_database_in_wal_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db
) -> None:
    database = tmp_path / "nested" / "events.db"
    monkeypatch.setenv("RABBITWORKER_ANALYTICS_DATABASE", str(database))

    rabbitworker_analytics.rabbitworker_startup()

    assert db(database, "PRAGMA journal_mode") == [{"journal_mode": "wal"}]
    assert db(database, "SELECT count(*) AS n FROM events") == [{"n": 0}]


def test_startup_fails_when_the_database_cannot_be_created(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setenv("RABBITWORKER_ANALYTICS_DATA_DIR", str(tmp_path / "a-file"))

    with pytest.raises(OSError, match="a-file"):
        rabbitworker_analytics.rabbitworker_startup()


def test_settings_come_from_prefixed_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RABBITWORKER_ANALYTICS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RABBITWORKER_ANALYTICS_BUSY_TIMEOUT", "2.5")

    settings = AnalyticsSettings()

    assert settings.database_path == tmp_path / "events.sqlite3"
    assert settings.busy_timeout == 2.5


def test_by_default_the_database_is_under_the_users_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)

    settings = AnalyticsSettings()

    assert settings.database_path == tmp_path / ".local/share/rabbitworker/analytics/events.sqlite3"
    assert not settings.data_dir.exists()


def test_every_setting_is_documented() -> None:
    undocumented = [
        name for name, field in AnalyticsSettings.model_fields.items() if not field.description
    ]
    assert undocumented == []
