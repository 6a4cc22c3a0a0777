"""QueueConfig: the contract's fields and defaults, and validation when a config is built.

Pure unit tests: nothing here needs a broker.
"""

from __future__ import annotations

from typing import Any

import pytest

import rabbitworker
from rabbitworker import InvalidQueueConfigError, QueueConfig


async def async_handler(message: dict[str, Any]) -> None:
    return None


def sync_handler(message: dict[str, Any]) -> None:
    return None


HANDLERS = {"do": async_handler}


def test_defaults_are_those_of_the_contract() -> None:
    config = QueueConfig(name="q", routing_key="rk", task_handlers=HANDLERS)

    assert config.prefetch_count == 1
    assert config.exchange_name == "tasks"
    assert config.dlx_exchange_name == "tasks.dlx"
    assert config.dlq_name == "tasks.dlq"


def test_builds_from_keywords() -> None:
    config = QueueConfig(
        name="reports.queue",
        routing_key="reports",
        task_handlers={"generate_report": async_handler, "export_data": sync_handler},
        prefetch_count=4,
        exchange_name="work",
        dlx_exchange_name="work.dlx",
        dlq_name="work.dlq",
    )

    assert config.name == "reports.queue"
    assert config.routing_key == "reports"
    assert config.task_handlers == {
        "generate_report": async_handler,
        "export_data": sync_handler,
    }
    assert config.prefetch_count == 4
    assert config.exchange_name == "work"
    assert config.dlx_exchange_name == "work.dlx"
    assert config.dlq_name == "work.dlq"


def test_builds_from_positional_arguments_in_contract_order() -> None:
    config = QueueConfig("q", "rk", HANDLERS, 7, "work", "work.dlx", "work.dlq")

    assert (
        config.name,
        config.routing_key,
        config.task_handlers,
        config.prefetch_count,
        config.exchange_name,
        config.dlx_exchange_name,
        config.dlq_name,
    ) == ("q", "rk", HANDLERS, 7, "work", "work.dlx", "work.dlq")


def test_accepts_async_and_plain_def_handlers_and_any_callable() -> None:
    class CallableObject:
        def __call__(self, message: dict[str, Any]) -> None:
            return None

    handlers = {"a": async_handler, "s": sync_handler, "o": CallableObject(), "l": print}
    config = QueueConfig("q", "rk", handlers)

    assert set(config.task_handlers) == {"a", "s", "o", "l"}


def test_is_exported_from_the_package_root_with_hookimpl() -> None:
    assert rabbitworker.QueueConfig is QueueConfig
    assert callable(rabbitworker.hookimpl)


def test_rejects_an_empty_name_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"'name'") as caught:
        QueueConfig(name="", routing_key="rk", task_handlers=HANDLERS)

    assert isinstance(caught.value, InvalidQueueConfigError)


@pytest.mark.parametrize("prefetch_count", [0, -1])
def test_rejects_prefetch_count_below_one_naming_the_field(prefetch_count: int) -> None:
    with pytest.raises(ValueError, match="prefetch_count"):
        QueueConfig("q", "rk", HANDLERS, prefetch_count=prefetch_count)


def test_rejects_a_handler_that_is_not_callable_naming_the_field() -> None:
    with pytest.raises(ValueError, match="task_handlers") as caught:
        QueueConfig("q", "rk", {"do": "not a function"})

    assert "'do'" in str(caught.value), "the message should also name the task"


def test_rejects_an_empty_handler_dict_naming_the_field() -> None:
    with pytest.raises(ValueError, match="task_handlers"):
        QueueConfig("q", "rk", {})


def test_rejects_a_config_built_without_handlers_naming_the_field() -> None:
    with pytest.raises(ValueError, match="task_handlers"):
        QueueConfig(name="q", routing_key="rk")


def test_the_rejection_names_the_queue_it_is_about() -> None:
    with pytest.raises(ValueError, match=r"billing\.queue"):
        QueueConfig("billing.queue", "billing", HANDLERS, prefetch_count=0)


def test_later_changes_to_the_plugins_dict_do_not_change_the_config() -> None:
    handlers: dict[str, Any] = {"do": async_handler}
    config = QueueConfig("q", "rk", handlers)

    handlers["other"] = sync_handler

    assert set(config.task_handlers) == {"do"}
