"""``rabbitworker-host asyncapi``: an AsyncAPI 3 document of the installed queues, valid
against the AsyncAPI specification's own JSON Schema (``asyncapi-3.0.0.schema.json``, from
the @asyncapi/specs package 6.11.1, Apache-2.0)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema import Draft7Validator

SPEC = json.loads((Path(__file__).parent / "support" / "asyncapi-3.0.0.schema.json").read_text())
SECRET = "asyncapi-Secret-pw"
URL = f"amqp://rw:{SECRET}@rabbit-1:5672/prod;amqps://rw:{SECRET}@rabbit-2:5671/prod"
QUEUES = [{"name": "probe.q", "routing_key": "probe", "prefetch_count": 3}]


@pytest.fixture
def asyncapi(run_cli: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[..., Any]:
    def run(fmt: str = "json") -> Any:
        result = run_cli(
            "asyncapi",
            "--format",
            fmt,
            queues=QUEUES,
            amqp_url=URL,
            RABBITWORKER_PLUGINS="probe_plugin,typed_plugin",
        )
        assert result.returncode == 0, result.stderr
        assert SECRET not in result.stdout + result.stderr
        return json.loads(result.stdout) if fmt == "json" else yaml.safe_load(result.stdout)

    return run


def test_the_document_is_valid_asyncapi_3(asyncapi: Callable[..., Any]) -> None:
    document = asyncapi()

    Draft7Validator(SPEC).validate(document)
    assert document["asyncapi"] == "3.0.0"


def test_every_queue_is_a_channel_and_every_task_a_message_with_a_receive_operation(
    asyncapi: Callable[..., Any],
) -> None:
    document = asyncapi()

    channels = document["channels"]
    assert set(channels) == {"probe_q", "typed_queue"}
    assert channels["typed_queue"]["address"] == "typed"
    amqp = channels["typed_queue"]["bindings"]["amqp"]
    assert (amqp["is"], amqp["exchange"]["name"]) == ("routingKey", "tasks")
    assert channels["typed_queue"]["title"] == "typed.queue"
    assert set(channels["typed_queue"]["messages"]) == {"explode", "greet", "greet_sync"}
    assert set(channels["probe_q"]["messages"]) == {"work", "work_sync", "fail"}
    receive = document["operations"]["typed_queue__receive"]
    assert receive["action"] == "receive"
    assert receive["channel"] == {"$ref": "#/channels/typed_queue"}


def test_a_typed_tasks_payload_schema_is_the_handlers_model(
    asyncapi: Callable[..., Any],
) -> None:
    document = asyncapi()

    message = document["components"]["messages"]["typed_queue__greet"]
    payload = message["payload"]["properties"]["payload"]
    assert payload["properties"]["name"] == {"minLength": 1, "title": "Name", "type": "string"}
    assert payload["required"] == ["name"]
    body = {"task": "greet", "payload": {"name": "Ada", "times": 2}}
    jsonschema.validate(body, message["payload"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"task": "greet", "payload": {"name": ""}}, message["payload"])


def test_servers_are_the_nodes_without_their_passwords(asyncapi: Callable[..., Any]) -> None:
    servers = asyncapi()["servers"]

    assert servers == {
        "node1": {
            "host": "rabbit-1:5672",
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "pathname": "/prod",
        },
        "node2": {
            "host": "rabbit-2:5671",
            "protocol": "amqps",
            "protocolVersion": "0.9.1",
            "pathname": "/prod",
        },
    }


def test_yaml_is_the_same_document(asyncapi: Callable[..., Any]) -> None:
    assert asyncapi("yaml") == asyncapi("json")
