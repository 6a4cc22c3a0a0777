"""The payload of each task, validated with pydantic.

Handlers validate the whole message (``{"task": ..., "payload": {...}}``) with the
``*Message`` models, so a :class:`pydantic.ValidationError` names the field by its path,
e.g. ``payload.to``, and a message without a payload fails as ``payload: Field required``.
Unknown payload fields are refused, so a misspelled one is not silently ignored.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, JsonValue

#: A header value: one line, or the message would carry headers the sender did not write.
HeaderText = Annotated[str, Field(min_length=1, max_length=998, pattern=r"^[^\r\n]*$")]


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


Addresses = Annotated[list[EmailStr], BeforeValidator(_one_or_many)]


class EmailPayload(BaseModel):
    """``send_email``: one email, plain text with an optional HTML alternative."""

    model_config = ConfigDict(extra="forbid")

    to: Addresses = Field(min_length=1, description="Recipient address(es): one or a list.")
    cc: Addresses = Field(default_factory=list, description="Copy recipients.")
    bcc: Addresses = Field(
        default_factory=list, description="Blind-copy recipients (not in the sent headers)."
    )
    reply_to: EmailStr | None = Field(None, description="The Reply-To address.")
    subject: HeaderText = Field(description="The subject line.")
    body: str = Field(description="The plain-text body.")
    html: str | None = Field(None, description="An HTML version of the body.")


class SmsPayload(BaseModel):
    """``send_sms``: one text message."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(
        pattern=r"^\+[1-9][0-9]{6,14}$",
        description="The phone number in E.164 form, e.g. +15551234567.",
    )
    body: str = Field(min_length=1, max_length=1600, description="The text.")


class PushPayload(BaseModel):
    """``send_push``: one push notification to one device."""

    model_config = ConfigDict(extra="forbid")

    device_token: str = Field(min_length=1, max_length=4096, description="The device's push token.")
    title: str = Field(min_length=1, max_length=200, description="The notification title.")
    body: str = Field(max_length=4000, description="The notification text.")
    data: dict[str, JsonValue] = Field(
        default_factory=dict, description="Extra key/values delivered to the app."
    )


class SendEmailMessage(BaseModel):
    payload: EmailPayload


class SendSmsMessage(BaseModel):
    payload: SmsPayload


class SendPushMessage(BaseModel):
    payload: PushPayload
