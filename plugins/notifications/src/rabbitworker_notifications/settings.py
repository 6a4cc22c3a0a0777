"""The plugin's settings, read from ``RABBITWORKER_NOTIFICATIONS_*`` environment variables.

With none set, everything is delivered locally under :attr:`data_dir`; setting an SMTP host or
a gateway URL switches that channel to the real service.
"""

from __future__ import annotations

import os
from email.utils import parseaddr
from pathlib import Path
from typing import Literal

from pydantic import Field, HttpUrl, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PLUGIN = "notifications"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/rabbitworker/notifications``, i.e. ``~/.local/share/...`` by default."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rabbitworker" / PLUGIN


class NotificationSettings(BaseSettings):
    """Each field is the environment variable ``RABBITWORKER_NOTIFICATIONS_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="RABBITWORKER_NOTIFICATIONS_", env_ignore_empty=True, extra="ignore"
    )

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where notifications are kept when no real service is configured: emails "
        "in the Maildir <data_dir>/maildir, SMS and push in <data_dir>/outbox/sms.jsonl and "
        "push.jsonl. Created on demand. Default: ~/.local/share/rabbitworker/notifications "
        "(under $XDG_DATA_HOME if that is set).",
    )
    mail_from: str = Field(
        "rabbitworker@localhost",
        description="The From header and envelope sender of every email, e.g. "
        "'Shop <noreply@example.com>'.",
    )
    smtp_host: str | None = Field(
        None,
        description="The SMTP server to send email through. Unset (the default): emails are "
        "delivered into the local Maildir instead.",
    )
    smtp_port: int = Field(25, ge=1, le=65535, description="The SMTP server's port.")
    smtp_security: Literal["auto", "starttls", "tls", "none"] = Field(
        "auto",
        description="auto: STARTTLS if the server offers it; starttls: require it; tls: "
        "implicit TLS from the first byte (usually port 465); none: plain text only.",
    )
    smtp_username: str | None = Field(
        None, description="Log in to the SMTP server with this user (and smtp_password)."
    )
    smtp_password: SecretStr | None = Field(None, description="The SMTP password; never logged.")
    smtp_timeout: float = Field(
        30.0, gt=0, description="Seconds an SMTP conversation may take before it fails."
    )
    sms_gateway_url: HttpUrl | None = Field(
        None,
        description="HTTP endpoint that send_sms POSTs its JSON to. Unset (the default): SMS "
        "are appended to <data_dir>/outbox/sms.jsonl instead.",
    )
    push_gateway_url: HttpUrl | None = Field(
        None,
        description="HTTP endpoint that send_push POSTs its JSON to. Unset (the default): push "
        "notifications are appended to <data_dir>/outbox/push.jsonl instead.",
    )
    gateway_token: SecretStr | None = Field(
        None,
        description="Sent to both gateways as 'Authorization: Bearer <token>'; never logged.",
    )
    http_timeout: float = Field(
        10.0, gt=0, description="Seconds a gateway request may take before it fails."
    )

    @property
    def maildir(self) -> Path:
        """The Maildir emails go to when no SMTP host is set."""
        return self.data_dir / "maildir"

    @property
    def outbox(self) -> Path:
        """The directory of the SMS and push JSONL outboxes."""
        return self.data_dir / "outbox"

    @property
    def uses_gateways(self) -> bool:
        """Whether any channel goes to an HTTP gateway (and so needs an HTTP client)."""
        return self.sms_gateway_url is not None or self.push_gateway_url is not None

    @property
    def mail_domain(self) -> str:
        """The domain of :attr:`mail_from`, used for Message-IDs."""
        return parseaddr(self.mail_from)[1].rpartition("@")[2] or "localhost"
