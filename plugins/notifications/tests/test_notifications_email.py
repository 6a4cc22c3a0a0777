"""send_email: through a real SMTP server when one is configured, else into a local Maildir."""

from __future__ import annotations

import email
import mailbox
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import aiosmtplib
import pytest
from pydantic import ValidationError

from rabbitworker_notifications import Notifier


def email_task(**payload: Any) -> dict[str, Any]:
    fields = {
        "to": "ada@example.com",
        "subject": "Your order shipped",
        "body": "It is on its way.",
        **payload,
    }
    return {"task": "send_email", "payload": fields}


def received(inbox: Any, index: int = 0) -> EmailMessage:
    parsed = email.message_from_bytes(inbox.envelopes[index].content, policy=default_policy)
    assert isinstance(parsed, EmailMessage)
    return parsed


async def test_email_is_delivered_to_the_smtp_server(smtp_server, make_settings) -> None:
    settings = make_settings(
        smtp_host=smtp_server.host, smtp_port=smtp_server.port, mail_from="Shop <shop@example.com>"
    )

    message_id = await Notifier(settings).send_email(
        email_task(to=["ada@example.com", "bob@example.com"], cc="cy@example.com")
    )

    (envelope,) = smtp_server.envelopes
    assert envelope.mail_from == "shop@example.com"
    assert envelope.rcpt_tos == ["ada@example.com", "bob@example.com", "cy@example.com"]
    sent = received(smtp_server)
    assert sent["Subject"] == "Your order shipped"
    assert sent["To"] == "ada@example.com, bob@example.com"
    assert sent["Cc"] == "cy@example.com"
    assert sent["From"] == "Shop <shop@example.com>"
    assert sent["Message-ID"] == message_id
    assert sent.get_content().strip() == "It is on its way."


async def test_bcc_recipients_get_the_email_without_a_bcc_header(
    smtp_server, make_settings
) -> None:
    settings = make_settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)

    await Notifier(settings).send_email(email_task(bcc=["audit@example.com"]))

    assert smtp_server.envelopes[0].rcpt_tos == ["ada@example.com", "audit@example.com"]
    assert "Bcc" not in received(smtp_server)


async def test_html_body_is_sent_as_an_alternative_part(smtp_server, make_settings) -> None:
    settings = make_settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)

    await Notifier(settings).send_email(email_task(html="<p>It is <b>on its way</b>.</p>"))

    sent = received(smtp_server)
    assert sent.get_content_type() == "multipart/alternative"
    assert sent.get_body(("plain",)).get_content().strip() == "It is on its way."
    assert "<b>on its way</b>" in sent.get_body(("html",)).get_content()


async def test_smtp_credentials_are_used_to_log_in(smtp_server_with_auth, make_settings) -> None:
    server = smtp_server_with_auth
    settings = make_settings(
        smtp_host=server.host,
        smtp_port=server.port,
        smtp_security="none",
        smtp_username="mailer",
        smtp_password="s3cret",
    )

    await Notifier(settings).send_email(email_task())

    assert len(server.envelopes) == 1


async def test_wrong_smtp_credentials_raise(smtp_server_with_auth, make_settings) -> None:
    server = smtp_server_with_auth
    settings = make_settings(
        smtp_host=server.host,
        smtp_port=server.port,
        smtp_security="none",
        smtp_username="mailer",
        smtp_password="wrong",
    )

    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await Notifier(settings).send_email(email_task())
    assert server.envelopes == []


async def test_email_refused_for_every_recipient_raises(smtp_server, make_settings) -> None:
    smtp_server.refuse = {"ada@example.com"}
    settings = make_settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await Notifier(settings).send_email(email_task())
    assert smtp_server.envelopes == []


async def test_without_smtp_host_the_email_is_stored_in_the_maildir(make_settings) -> None:
    settings = make_settings()

    message_id = await Notifier(settings).send_email(
        email_task(bcc="audit@example.com", reply_to="help@example.com")
    )

    box = mailbox.Maildir(settings.maildir, factory=None, create=False)
    (stored,) = list(box)
    assert stored["Message-ID"] == message_id
    assert stored["To"] == "ada@example.com"
    assert stored["Bcc"] == "audit@example.com"
    assert stored["Reply-To"] == "help@example.com"
    assert stored["Subject"] == "Your order shipped"
    assert stored.get_payload().strip() == "It is on its way."
    assert [path.parent.name for path in settings.maildir.rglob("*") if path.is_file()] == ["new"]


async def test_every_email_gets_its_own_maildir_file(make_settings) -> None:
    settings = make_settings()
    notifier = Notifier(settings)

    ids = {await notifier.send_email(email_task(subject=f"no. {n}")) for n in range(3)}

    box = mailbox.Maildir(settings.maildir, create=False)
    assert {message["Message-ID"] for message in box} == ids
    assert sorted(message["Subject"] for message in box) == ["no. 0", "no. 1", "no. 2"]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"task": "send_email"}, "payload"),
        ({"task": "send_email", "payload": {"subject": "s", "body": "b"}}, "payload.to"),
        (email_task(to="not-an-address"), "payload.to.0"),
        (email_task(to=[]), "payload.to"),
        (email_task(cc=["ada@example.com", "nope"]), "payload.cc.1"),
        (email_task(subject="Hi\r\nBcc: everyone@example.com"), "payload.subject"),
        (email_task(body=None), "payload.body"),
        (email_task(subjekt="typo"), "payload.subjekt"),
    ],
)
async def test_a_bad_payload_raises_naming_the_field(
    make_settings, message: dict[str, Any], field: str
) -> None:
    settings = make_settings()

    with pytest.raises(ValidationError) as raised:
        await Notifier(settings).send_email(message)

    assert any(".".join(map(str, error["loc"])) == field for error in raised.value.errors())
    assert field in str(raised.value)
    assert not settings.data_dir.exists()
