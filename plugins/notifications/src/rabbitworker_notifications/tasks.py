"""The work behind each task. :class:`Notifier` holds the settings and the gateways' client."""

from __future__ import annotations

import asyncio
import json
import mailbox
import os
import threading
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosmtplib
import httpx
from loguru import logger
from pydantic import HttpUrl

from rabbitworker_notifications.payloads import (
    EmailPayload,
    SendEmailMessage,
    SendPushMessage,
    SendSmsMessage,
)
from rabbitworker_notifications.settings import NotificationSettings

_START_TLS = {"auto": None, "starttls": True, "tls": False, "none": False}


class GatewayError(Exception):
    """An SMS or push gateway answered with a status other than 2xx."""

    def __init__(self, channel: str, url: str, status: int, detail: str) -> None:
        self.channel = channel
        self.status = status
        super().__init__(f"{channel} gateway {url} answered HTTP {status}: {detail}")


class Notifier:
    """Sends emails, SMS and push notifications as :class:`NotificationSettings` says.

    The handlers are its ``send_*`` methods. :meth:`start` opens the HTTP client the gateways
    are reached with and :meth:`close` closes it; ``async with Notifier(settings)`` does both.
    """

    def __init__(self, settings: NotificationSettings) -> None:
        self.settings = settings
        self._http: httpx.AsyncClient | None = None
        # Concurrent handlers append to the same outbox file: one line at a time.
        self._outbox_lock = threading.Lock()

    async def start(self) -> None:
        """Open the HTTP client, if any channel goes to a gateway."""
        if self._http is not None or not self.settings.uses_gateways:
            return
        headers = {}
        if self.settings.gateway_token is not None:
            headers["Authorization"] = f"Bearer {self.settings.gateway_token.get_secret_value()}"
        self._http = httpx.AsyncClient(timeout=self.settings.http_timeout, headers=headers)

    async def close(self) -> None:
        """Close the HTTP client; the host calls this once in-flight messages are done."""
        client, self._http = self._http, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- handlers ---------------------------------------------------------------------------

    async def send_email(self, message: dict[str, Any]) -> str:
        """Send one email by SMTP, or store it in the local Maildir; return its Message-ID."""
        email = self.build_email(SendEmailMessage.model_validate(message).payload)
        message_id = str(email["Message-ID"])
        if self.settings.smtp_host is None:
            path = await asyncio.to_thread(deliver_to_maildir, self.settings.maildir, email)
            logger.info("email {} stored in Maildir as {}", message_id, path)
            return message_id
        password = self.settings.smtp_password
        refused, _ = await aiosmtplib.send(
            email,
            hostname=self.settings.smtp_host,
            port=self.settings.smtp_port,
            username=self.settings.smtp_username,
            password=password.get_secret_value() if password is not None else None,
            use_tls=self.settings.smtp_security == "tls",
            start_tls=_START_TLS[self.settings.smtp_security],
            timeout=self.settings.smtp_timeout,
        )
        if refused:
            # The server took the mail for the other recipients, so a retry would duplicate it.
            logger.warning(
                "email {}: the SMTP server refused {}", message_id, ", ".join(sorted(refused))
            )
        logger.info(
            "email {} sent through {}:{}",
            message_id,
            self.settings.smtp_host,
            self.settings.smtp_port,
        )
        return message_id

    async def send_sms(self, message: dict[str, Any]) -> str:
        """Send one SMS through the gateway, or append it to the outbox; return its id."""
        sms = SendSmsMessage.model_validate(message).payload
        return await self._deliver(
            "sms", self.settings.sms_gateway_url, sms.model_dump(mode="json")
        )

    async def send_push(self, message: dict[str, Any]) -> str:
        """Send one push notification through the gateway, or to the outbox; return its id."""
        push = SendPushMessage.model_validate(message).payload
        return await self._deliver(
            "push", self.settings.push_gateway_url, push.model_dump(mode="json")
        )

    # -- the work ---------------------------------------------------------------------------

    def build_email(self, payload: EmailPayload) -> EmailMessage:
        """The email to send; Bcc stays in it (SMTP delivery strips it, the Maildir keeps it)."""
        email = EmailMessage()
        email["From"] = self.settings.mail_from
        email["To"] = ", ".join(payload.to)
        if payload.cc:
            email["Cc"] = ", ".join(payload.cc)
        if payload.bcc:
            email["Bcc"] = ", ".join(payload.bcc)
        if payload.reply_to is not None:
            email["Reply-To"] = payload.reply_to
        email["Subject"] = payload.subject
        email["Date"] = format_datetime(datetime.now(UTC))
        email["Message-ID"] = make_msgid(domain=self.settings.mail_domain)
        email.set_content(payload.body)
        if payload.html is not None:
            email.add_alternative(payload.html, subtype="html")
        return email

    async def _deliver(self, channel: str, url: HttpUrl | None, fields: dict[str, Any]) -> str:
        record = {"id": uuid.uuid4().hex, "created_at": datetime.now(UTC).isoformat(), **fields}
        if url is None:
            path = self.settings.outbox / f"{channel}.jsonl"
            await asyncio.to_thread(self._append_line, path, record)
            logger.info("{} {} appended to {}", channel, record["id"], path)
            return str(record["id"])
        if self._http is None:
            raise RuntimeError(
                "the notifications plugin's HTTP client is not open: the host opens it in "
                "rabbitworker_startup; outside the host use `async with Notifier(settings)`"
            )
        response = await self._http.post(str(url), json=record)
        if not response.is_success:
            raise GatewayError(channel, _public_url(url), response.status_code, response.text[:200])
        logger.info(
            "{} {} accepted by {} (HTTP {})",
            channel,
            record["id"],
            _public_url(url),
            response.status_code,
        )
        return str(record["id"])

    def _append_line(self, path: Path, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._outbox_lock, path.open("ab") as file:
            file.write(line)
            file.flush()
            # The message is acked once this returns: the line must be on disk by then.
            os.fsync(file.fileno())


def deliver_to_maildir(maildir: Path, email: EmailMessage) -> Path:
    """Store ``email`` in the Maildir ``maildir`` (created if missing); return its file."""
    # Created here rather than by Maildir(create=True), which races with concurrent handlers.
    for subdir in ("tmp", "new", "cur"):
        (maildir / subdir).mkdir(parents=True, exist_ok=True)
    key = mailbox.Maildir(maildir, create=False).add(email)
    path = maildir / "new" / key
    _fsync(path)
    _fsync(path.parent)
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _public_url(url: HttpUrl) -> str:
    """The URL without credentials or query string, safe to log and to put in an error."""
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}{url.path or ''}"
