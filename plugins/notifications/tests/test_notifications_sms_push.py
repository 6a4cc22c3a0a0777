"""send_sms and send_push: POSTed to a real HTTP gateway when configured, else to a JSONL outbox."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from rabbitworker_notifications import GatewayError, Notifier

SMS = {"task": "send_sms", "payload": {"to": "+15551234567", "body": "Your code is 1234"}}
PUSH = {
    "task": "send_push",
    "payload": {
        "device_token": "tok-1",
        "title": "Order shipped",
        "body": "It is on its way.",
        "data": {"order": 42, "tags": ["a"]},
    },
}


def outbox(settings: Any, channel: str) -> list[dict[str, Any]]:
    path = settings.outbox / f"{channel}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_sms_is_posted_to_the_gateway(gateway, make_settings) -> None:
    settings = make_settings(sms_gateway_url=f"{gateway.url}/sms", gateway_token="t0ken")

    async with Notifier(settings) as notifier:
        sms_id = await notifier.send_sms(SMS)

    (request,) = gateway.requests
    assert request["path"] == "/sms"
    assert request["headers"]["Authorization"] == "Bearer t0ken"
    assert request["json"]["to"] == "+15551234567"
    assert request["json"]["body"] == "Your code is 1234"
    assert request["json"]["id"] == sms_id
    assert not settings.data_dir.exists()


async def test_push_is_posted_to_the_gateway(gateway, make_settings) -> None:
    settings = make_settings(push_gateway_url=f"{gateway.url}/push")

    async with Notifier(settings) as notifier:
        push_id = await notifier.send_push(PUSH)

    (request,) = gateway.requests
    assert request["path"] == "/push"
    assert "Authorization" not in request["headers"]
    assert request["json"] == {
        "id": push_id,
        "created_at": request["json"]["created_at"],
        **PUSH["payload"],
    }


@pytest.mark.parametrize("status", [400, 404, 500, 503])
async def test_a_gateway_answering_non_2xx_raises(gateway, make_settings, status: int) -> None:
    gateway.status = status
    settings = make_settings(
        sms_gateway_url=f"http://user:secret@{gateway.host}:{gateway.port}/sms?key=secret"
    )

    async with Notifier(settings) as notifier:
        with pytest.raises(GatewayError, match=f"sms gateway .* answered HTTP {status}") as raised:
            await notifier.send_sms(SMS)

    assert raised.value.status == status
    assert "secret" not in str(raised.value)
    assert len(gateway.requests) == 1


async def test_sending_through_a_closed_notifier_raises(gateway, make_settings) -> None:
    settings = make_settings(push_gateway_url=f"{gateway.url}/push")
    notifier = Notifier(settings)
    await notifier.start()
    await notifier.close()

    with pytest.raises(RuntimeError, match="not open"):
        await notifier.send_push(PUSH)


async def test_an_unreachable_gateway_raises(make_settings, closed_port: int) -> None:
    settings = make_settings(sms_gateway_url=f"http://127.0.0.1:{closed_port}/sms")

    async with Notifier(settings) as notifier:
        with pytest.raises(httpx.ConnectError):
            await notifier.send_sms(SMS)


async def test_without_gateway_sms_are_appended_to_the_outbox(make_settings) -> None:
    settings = make_settings()
    notifier = Notifier(settings)

    first = await notifier.send_sms(SMS)
    second = await notifier.send_sms(
        {"task": "send_sms", "payload": {**SMS["payload"], "body": "2"}}
    )

    lines = outbox(settings, "sms")
    assert [line["id"] for line in lines] == [first, second]
    assert [line["body"] for line in lines] == ["Your code is 1234", "2"]
    assert all(line["to"] == "+15551234567" and line["created_at"] for line in lines)


async def test_without_gateway_push_goes_to_its_own_outbox(make_settings) -> None:
    settings = make_settings()

    push_id = await Notifier(settings).send_push(PUSH)

    (line,) = outbox(settings, "push")
    assert line["id"] == push_id
    assert line["data"] == {"order": 42, "tags": ["a"]}
    assert not (settings.outbox / "sms.jsonl").exists()


async def test_a_gateway_for_one_channel_leaves_the_other_local(gateway, make_settings) -> None:
    settings = make_settings(sms_gateway_url=f"{gateway.url}/sms")

    async with Notifier(settings) as notifier:
        await notifier.send_sms(SMS)
        await notifier.send_push(PUSH)

    assert [request["path"] for request in gateway.requests] == ["/sms"]
    assert len(outbox(settings, "push")) == 1


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"task": "send_sms"}, "payload"),
        ({"task": "send_sms", "payload": {"body": "hi"}}, "payload.to"),
        ({"task": "send_sms", "payload": {"to": "5551234", "body": "hi"}}, "payload.to"),
        ({"task": "send_sms", "payload": {"to": "+15551234567", "body": ""}}, "payload.body"),
        ({"task": "send_sms", "payload": "+15551234567"}, "payload"),
    ],
)
async def test_a_bad_sms_payload_raises_naming_the_field(
    make_settings, message: dict[str, Any], field: str
) -> None:
    settings = make_settings()

    with pytest.raises(ValidationError, match=rf"(?m)^{field}$"):
        await Notifier(settings).send_sms(message)
    assert not settings.data_dir.exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"title": "t", "body": "b"}, "payload.device_token"),
        ({"device_token": "x", "body": "b"}, "payload.title"),
        ({"device_token": "x", "title": "t", "body": "b", "data": ["no"]}, "payload.data"),
        ({"device_token": "x", "title": "t", "body": "b", "badge": 3}, "payload.badge"),
    ],
)
async def test_a_bad_push_payload_raises_naming_the_field(
    make_settings, payload: dict[str, Any], field: str
) -> None:
    settings = make_settings()

    with pytest.raises(ValidationError, match=rf"(?m)^{field}$"):
        await Notifier(settings).send_push({"task": "send_push", "payload": payload})
    assert not settings.data_dir.exists()
