"""``rabbitworker-host new-plugin NAME``: write a complete, installable plugin package."""

from __future__ import annotations

import re
from pathlib import Path

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "rabbitworker-{dist}"
version = "0.1.0"
description = "The {name} queue, served by rabbitworker-host."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["rabbitworker-host", "pydantic>=2"]

[project.optional-dependencies]
test = ["rabbitworker-host[testing]", "pytest", "pytest-asyncio"]

# This line is what makes rabbitworker-host find the plugin once it is pip-installed.
[project.entry-points."rabbitworker.queues"]
{name} = "{package}"

[tool.hatch.build.targets.wheel]
packages = ["src/{package}"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
testpaths = ["tests"]
"""

MODULE = '''\
"""The {name} plugin: one queue, one typed task."""

from __future__ import annotations

from pydantic import BaseModel

from rabbitworker import QueueConfig, TaskContext, hookimpl


class Greet(BaseModel):
    """The payload of a `greet` task; a message that does not match is dead-lettered."""

    name: str


async def greet(payload: Greet, context: TaskContext) -> str:
    """Handle one `greet` task. Raise to fail it (retried, then dead-lettered)."""
    greeting = f"hello, {{payload.name}}!"
    context.logger.info(greeting)
    return greeting


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    return [
        QueueConfig(
            name="{name}.queue",
            routing_key="{name}",
            task_handlers={{"greet": greet}},
            prefetch_count=10,
            max_retries=3,
        )
    ]
'''

TESTS = '''\
"""Tests of the {name} plugin, run by the host's real dispatch path, without a broker."""

from importlib.metadata import entry_points


def test_plugin_is_installed_through_its_entry_point() -> None:
    names = {{ep.name for ep in entry_points(group="rabbitworker.queues")}}
    assert "{name}" in names


async def test_greet_is_acked(rabbitworker_worker) -> None:
    worker = await rabbitworker_worker("{name}")

    result = await worker.push(
        {{"task": "greet", "payload": {{"name": "Ada"}}}}, routing_key="{name}"
    )

    assert result.acked
    assert result.result == "hello, Ada!"


async def test_a_payload_without_name_is_dead_lettered(rabbitworker_worker) -> None:
    worker = await rabbitworker_worker("{name}")

    result = await worker.push({{"task": "greet", "payload": {{}}}}, routing_key="{name}")

    assert result.dead_lettered
    assert result.reason == "invalid-payload"
    assert "name" in result.detail
'''

README = """\
# rabbitworker-{dist}

A [rabbitworker](https://pypi.org/project/rabbitworker-host/) plugin: the `{name}.queue`
queue (routing key `{name}`) with one task, `greet`.

```bash
pip install -e '.[test]'     # install next to rabbitworker-host
rabbitworker-host queues     # the host now lists {name}.queue
pytest                       # the plugin's tests (no broker needed)
```

Publish a task while `rabbitworker-host` runs:

```python
import asyncio
from rabbitworker import publish_task

asyncio.run(publish_task({{"task": "greet", "payload": {{"name": "Ada"}}}}, "{name}"))
```

Add tasks by adding handlers to `task_handlers` in `src/{package}/__init__.py`.
"""


def write_plugin(name: str, parent: Path) -> Path:
    """Write the plugin ``name`` into ``parent/rabbitworker-<name>/`` and return that folder.

    :raises ValueError: the name is not a lowercase identifier, or the folder exists.
    """
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"plugin name {name!r} must be lowercase letters, digits and underscores, starting "
            "with a letter (it becomes the entry-point and package name), e.g. 'billing'"
        )
    dist = name.replace("_", "-")
    package = f"rabbitworker_{name}"
    root = parent / f"rabbitworker-{dist}"
    if root.exists():
        raise ValueError(f"{root} already exists; choose another name or remove it")
    values = {"name": name, "dist": dist, "package": package}
    files = {
        root / "pyproject.toml": PYPROJECT,
        root / "README.md": README,
        root / "src" / package / "__init__.py": MODULE,
        root / "src" / package / "py.typed": "",
        root / "tests" / f"test_{name}.py": TESTS,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    return root
