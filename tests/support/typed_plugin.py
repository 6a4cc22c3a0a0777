"""A plugin with typed handlers, for the tests of typed dispatch and of rabbitworker.testing."""

from __future__ import annotations

from pydantic import BaseModel, Field

from rabbitworker import QueueConfig, TaskContext, hookimpl


class Greeting(BaseModel):
    name: str = Field(min_length=1)
    times: int = 1


async def greet(greeting: Greeting, context: TaskContext) -> dict[str, object]:
    return {
        "text": ", ".join([f"hello {greeting.name}"] * greeting.times),
        "attempt": context.attempt,
        "queue": context.queue,
    }


def greet_sync(greeting: Greeting) -> str:
    return f"hi {greeting.name}"


async def explode(message: dict[str, object]) -> None:
    raise RuntimeError(f"exploded on {message.get('payload')}")


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    return [
        QueueConfig(
            name="typed.queue",
            routing_key="typed",
            task_handlers={"greet": greet, "greet_sync": greet_sync, "explode": explode},
            prefetch_count=4,
            max_retries=1,
            retry_delays=[0.2],
        )
    ]
