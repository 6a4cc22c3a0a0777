"""The plugin is installed and registered through its entry point, with its own settings."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

import rabbitworker_reports
from rabbitworker import HostSettings
from rabbitworker.plugins import HostPlugins
from rabbitworker_reports import ReportSettings

DISTRIBUTION = "rabbitworker-reports"
CONTRACT_QUEUES = {("reports.queue", "reports", 1, ("export_data", "generate_report"))}


def test_the_entry_point_is_installed_by_its_distribution() -> None:
    (entry_point,) = entry_points(group="rabbitworker.queues", name="reports")

    assert entry_point.value == "rabbitworker_reports"
    assert entry_point.dist is not None
    assert entry_point.dist.name == DISTRIBUTION
    assert entry_point.load() is rabbitworker_reports


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
    assert {r.plugin.name for r in ours} == {"reports"}
    (config,) = (r.config for r in ours)
    assert (config.exchange_name, config.dlx_exchange_name, config.dlq_name) == (
        "tasks",
        "tasks.dlx",
        "tasks.dlq",
    )


async def test_the_registered_handlers_write_under_the_configured_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RABBITWORKER_REPORTS_DATA_DIR", str(tmp_path))
    (queue,) = rabbitworker_reports.rabbitworker_queues()

    path = await queue.task_handlers["export_data"](
        {"task": "export_data", "payload": {"dataset": "d", "export_id": "e", "records": []}}
    )

    assert path == str(tmp_path / "exports" / "d" / "e.csv")


def test_by_default_files_go_under_the_users_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)

    settings = ReportSettings()

    assert settings.data_dir == tmp_path / ".local/share/rabbitworker/reports"
    assert not settings.data_dir.exists()


def test_xdg_data_home_moves_the_default_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

    assert ReportSettings().data_dir == tmp_path / "rabbitworker" / "reports"


def test_every_setting_is_documented() -> None:
    undocumented = [
        name for name, field in ReportSettings.model_fields.items() if not field.description
    ]
    assert undocumented == []
