"""Plugins that contradict each other are stopped at start-up, naming both and what to do."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from rabbitworker import InvalidQueueConfigError, QueueConfig, TopologyConflictError
from rabbitworker.errors import PluginInfo
from rabbitworker.handlers import HandlerSpec
from rabbitworker.plugins import QueueRegistration
from rabbitworker.topology import plan_topology


async def handle(message: dict[str, Any]) -> None:
    return None


def registration(plugin: str, **config: Any) -> QueueRegistration:
    return QueueRegistration(
        QueueConfig(task_handlers={"send": handle}, **config),
        PluginInfo(plugin, f"rabbitworker-{plugin}", "1.0"),
    )


def test_two_queues_on_one_routing_key_of_a_direct_exchange_name_both_plugins() -> None:
    with pytest.raises(TopologyConflictError) as error:
        plan_topology(
            [
                registration("billing", name="a.q", routing_key="send"),
                registration("mailer", name="b.q", routing_key="send"),
            ]
        )

    text = str(error.value)
    assert "rabbitworker-billing" in text
    assert "rabbitworker-mailer" in text
    assert "both handle send" in text
    assert "another routing_key" in text


def test_the_same_routing_key_on_a_topic_exchange_is_allowed() -> None:
    plan = plan_topology(
        [
            registration(
                "a",
                name="a.q",
                routing_key="x",
                exchange_name="events",
                exchange_type="topic",
                dlx_exchange_name="events.dlx",
            ),
            registration(
                "b",
                name="b.q",
                routing_key="x",
                exchange_name="events",
                exchange_type="topic",
                dlx_exchange_name="events.dlx",
            ),
        ]
    )

    assert set(plan.queues) >= {"a.q", "b.q"}


def test_one_exchange_wanted_with_two_types_names_both_queues() -> None:
    with pytest.raises(TopologyConflictError, match="'shared'"):
        plan_topology(
            [
                registration("a", name="a.q", routing_key="a", exchange_name="shared"),
                registration(
                    "b", name="b.q", routing_key="b", exchange_name="shared", exchange_type="topic"
                ),
            ]
        )


def test_a_coroutine_function_behind_a_plain_wrapper_is_still_awaited() -> None:
    @functools.wraps(handle)
    def wrapper(message: dict[str, Any]) -> Any:
        return handle(message)

    assert HandlerSpec.inspect(wrapper).is_async


def test_a_handler_that_cannot_take_a_message_is_refused_when_the_config_is_built() -> None:
    async def two_messages(first: dict[str, Any], second: dict[str, Any]) -> None:
        return None

    with pytest.raises(InvalidQueueConfigError, match="task_handlers") as error:
        QueueConfig("q", "q", {"send": two_messages})

    assert "must take one parameter for the message" in str(error.value)
