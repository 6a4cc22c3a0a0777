"""The README and the docstrings keep up with the code: every setting, hook and command."""

from __future__ import annotations

from pathlib import Path

import pytest

from rabbitworker import hookspecs
from rabbitworker.cli import main
from rabbitworker.settings import ConsoleSettings, HostSettings

README = (Path(__file__).parent.parent / "README.md").read_text()
HOOKS = [name for name in dir(hookspecs) if name.startswith("rabbitworker_")]


@pytest.mark.parametrize("field", sorted(HostSettings.model_fields))
def test_every_setting_is_documented_in_the_readme_and_has_a_description(field: str) -> None:
    assert f"`RABBITWORKER_{field.upper()}`" in README
    assert HostSettings.model_fields[field].description


@pytest.mark.parametrize("field", sorted(ConsoleSettings.model_fields))
def test_every_console_setting_is_documented_in_the_readme_and_has_a_description(
    field: str,
) -> None:
    assert f"`RABBITWORKER_{field.upper()}`" in README
    assert ConsoleSettings.model_fields[field].description


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_in_the_readme_and_has_a_docstring(hook: str) -> None:
    assert f"`{hook}(" in README
    assert (getattr(hookspecs, hook).__doc__ or "").strip()


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_is_in_the_readme_and_has_help(command: str) -> None:
    assert f"rabbitworker-host {command}" in README
    assert main.commands[command].help
