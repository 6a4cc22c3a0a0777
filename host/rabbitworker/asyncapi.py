"""An AsyncAPI 3 document of the installed queues: ``rabbitworker-host asyncapi``.

Every queue is a channel (its routing key on its exchange, with the AMQP channel binding),
every task a message of that channel with its JSON Schema (the typed handler's payload
model; any object otherwise) and a ``receive`` operation. Built from the plugins alone,
without a broker; servers come from ``RABBITWORKER_AMQP_URL``, passwords left out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from yarl import URL

from rabbitworker.plugins import QueueRegistration

#: The AMQP bindings version (asyncapi/bindings, amqp/0.3.0).
AMQP_BINDING_VERSION = "0.3.0"


def _id(name: str) -> str:
    """AsyncAPI keys are ``[A-Za-z0-9_-]+``: queue and task names are mapped onto that."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", name)


def _hoist(schema: dict[str, Any], schemas: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Move a pydantic schema's ``$defs`` to ``components/schemas`` (their refs would point
    at the document's root otherwise), renaming them with ``prefix``."""
    defs = schema.pop("$defs", {})
    renamed = {name: f"{prefix}_{_id(name)}" for name in defs}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                node = {**node, "$ref": f"#/components/schemas/{renamed[ref[8:]]}"}
            return {key: rewrite(value) for key, value in node.items()}
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    for name, definition in defs.items():
        schemas[renamed[name]] = rewrite(definition)
    result: dict[str, Any] = rewrite(schema)
    return result


def _servers(urls: Sequence[str]) -> dict[str, Any]:
    servers: dict[str, Any] = {}
    for number, raw in enumerate(urls, start=1):
        url = URL(raw)
        server: dict[str, Any] = {
            "host": f"{url.host}:{url.port or (5671 if url.scheme == 'amqps' else 5672)}",
            "protocol": url.scheme,
            "protocolVersion": "0.9.1",
        }
        vhost = url.path[1:] or "/"
        server["pathname"] = "/" + vhost.lstrip("/")
        servers[f"node{number}"] = server
    return servers


def document(registrations: Sequence[QueueRegistration], urls: Sequence[str]) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document, as plain data."""
    try:
        host_version = version("rabbitworker-host")
    except PackageNotFoundError:
        host_version = "0"
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for registration in registrations:
        config = registration.config
        channel_id = _id(config.name)
        channel_messages: dict[str, Any] = {}
        for task, spec in sorted(config.handler_specs.items()):
            message_id = f"{channel_id}__{_id(task)}"
            payload_schema = spec.payload_schema()
            payload = (
                _hoist(payload_schema, schemas, message_id)
                if payload_schema is not None
                else {"type": "object"}
            )
            messages[message_id] = {
                "name": task,
                "title": f"{task} on {config.name}",
                "contentType": "application/json",
                "payload": {
                    "type": "object",
                    "required": ["task", "payload"] if payload_schema else ["task"],
                    "properties": {"task": {"const": task}, "payload": payload},
                },
            }
            channel_messages[_id(task)] = {"$ref": f"#/components/messages/{message_id}"}
        channels[channel_id] = {
            "address": config.routing_key,
            "title": config.name,
            "description": (
                f"Queue {config.name!r} (plugin {registration.plugin.describe()}), bound to "
                f"exchange {config.exchange_name!r} with routing key {config.routing_key!r}; "
                f"prefetch {config.prefetch_count}; failed messages go through "
                f"{config.dlx_exchange_name!r} to {config.dlq_name!r}."
            ),
            "messages": channel_messages,
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": config.exchange_name,
                        "type": config.exchange_type,
                        "durable": True,
                        "autoDelete": False,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
        operations[f"{channel_id}__receive"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"rabbitworker-host handles {', '.join(config.tasks)}",
            "messages": [
                {"$ref": f"#/channels/{channel_id}/messages/{key}"} for key in channel_messages
            ],
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "rabbitworker queues",
            "version": host_version,
            "description": "The queues and tasks of the installed rabbitworker plugins.",
        },
        "servers": _servers(urls),
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
