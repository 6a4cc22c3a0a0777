"""The plugin is installed, registered through its entry point, and wired to the host."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

import rabbitworker_notifications
from rabbitworker import HostSettings
from rabbitworker.plugins import HostPlugins
from rabbitworker_notifications import NotificationSettings

DISTRIBUTION = "rabbitworker-notifications"
CONTRACT_QUEUES = {
    ("notifications.queue", "notifications", 10, ("send_email", "send_push", "send_sms")),
    ("tasks.main", "tasks.main", 1, ("send_email",)),
}


def test_the_entry_point_is_installed_by_its_distribution() -> None:
    (entry_point,) = entry_points(group="rabbitworker.queues", name="notifications")

    assert entry_point.value == "rabbitworker_notifications"
    assert entry_point.dist is not None
    assert entry_point.dist.name == DISTRIBUTION
    assert entry_point.load() is rabbitworker_notifications


def test_the_host_collects_exactly_the_contract_queues() -> None:
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
    assert {r.plugin.name for r in ours} == {"notifications"}
    for registration in ours:
        config = registration.config
        assert (config.exchange_name, config.dlx_exchange_name, config.dlq_name) == (
            "tasks",
            "tasks.dlx",
            "tasks.dlq",
        )


async def test_startup_opens_and_shutdown_closes_the_gateway_client(
    gateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RABBITWORKER_NOTIFICATIONS_SMS_GATEWAY_URL", f"{gateway.url}/sms")
    monkeypatch.setenv("RABBITWORKER_NOTIFICATIONS_DATA_DIR", str(tmp_path))
    queue = rabbitworker_notifications.rabbitworker_queues()[0]
    send_sms = queue.task_handlers["send_sms"]
    sms = {"task": "send_sms", "payload": {"to": "+15551234567", "body": "hi"}}

    await rabbitworker_notifications.rabbitworker_startup()
    await send_sms(sms)
    await rabbitworker_notifications.rabbitworker_shutdown()

    assert [request["json"]["body"] for request in gateway.requests] == ["hi"]
    with pytest.raises(RuntimeError, match="not open"):
        await send_sms(sms)


def test_settings_come_from_prefixed_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RABBITWORKER_NOTIFICATIONS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RABBITWORKER_NOTIFICATIONS_SMTP_HOST", "mail.example.com")
    monkeypatch.setenv("RABBITWORKER_NOTIFICATIONS_SMTP_PORT", "2525")
    monkeypatch.setenv("RABBITWORKER_NOTIFICATIONS_PUSH_GATEWAY_URL", "")

    settings = NotificationSettings()

    assert settings.data_dir == tmp_path
    assert (settings.smtp_host, settings.smtp_port) == ("mail.example.com", 2525)
    assert settings.push_gateway_url is None


def test_by_default_everything_is_delivered_under_the_users_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)

    settings = NotificationSettings()

    assert settings.data_dir == tmp_path / ".local/share/rabbitworker/notifications"
    assert settings.smtp_host is None
    assert not settings.uses_gateways
    assert not settings.data_dir.exists()


def test_every_setting_is_documented() -> None:
    undocumented = [
        name for name, field in NotificationSettings.model_fields.items() if not field.description
    ]
    assert undocumented == []
