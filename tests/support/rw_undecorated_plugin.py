"""A plugin whose hook lacks ``@hookimpl``: pluggy alone would skip it and lose its queue."""

from rabbitworker import QueueConfig


async def greet(message: dict[str, object]) -> None:
    pass


def rabbitworker_queues() -> list[QueueConfig]:
    return [QueueConfig("undecorated.q", "undecorated", {"greet": greet})]
