"""Per-deployment overrides: change a plugin's queue settings without editing the plugin.

Overrides come from ``RABBITWORKER_QUEUES`` (JSON) and the ``[queues."<name>"]`` tables of
the TOML settings file; the environment wins. Each changed field remembers its source, so
``rabbitworker-host queues`` can say where an effective value came from.
"""

from __future__ import annotations

import dataclasses
import json
import os

from rabbitworker.errors import InvalidQueueConfigError, RabbitworkerError
from rabbitworker.plugins import QueueRegistration
from rabbitworker.settings import HostSettings, config_file

ENV_VAR = "RABBITWORKER_QUEUES"


class OverrideError(RabbitworkerError):
    """An override names an unknown queue or sets an invalid value."""


def _env_fields() -> dict[str, set[str]]:
    try:
        raw = json.loads(os.environ.get(ENV_VAR, "{}"))
    except json.JSONDecodeError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {queue: set(fields) for queue, fields in raw.items() if isinstance(fields, dict)}


def apply_overrides(
    registrations: list[QueueRegistration], settings: HostSettings
) -> list[QueueRegistration]:
    """Return the registrations with ``settings.queues`` applied and re-validated.

    :raises OverrideError: an override names no known queue, or makes a config invalid.
    """
    if not settings.queues:
        return registrations
    known = {registration.config.name for registration in registrations}
    unknown = sorted(set(settings.queues) - known)
    if unknown:
        raise OverrideError(
            f"queue overrides (in {ENV_VAR}, or the TOML file {config_file()} if it exists) "
            f"name {', '.join(unknown)}, "
            f"which no loaded plugin declares. Known queues: {', '.join(sorted(known))}."
        )
    from_env = _env_fields()
    result = []
    for registration in registrations:
        override = settings.queues.get(registration.config.name)
        changes = override.changes() if override else {}
        if not changes:
            result.append(registration)
            continue
        sources = {
            field: f"env {ENV_VAR}"
            if field in from_env.get(registration.config.name, ())
            else f"file {config_file()}"
            for field in changes
        }
        try:
            config = dataclasses.replace(registration.config, **changes)  # type: ignore[arg-type]
        except InvalidQueueConfigError as exc:
            raise OverrideError(
                f"the override of {', '.join(f'{k} ({v})' for k, v in sources.items())} "
                f"makes queue {registration.config.name!r} invalid: {exc}"
            ) from exc
        result.append(dataclasses.replace(registration, config=config, overrides=sources))
    return result
