"""The payload of each task, validated with pydantic.

Handlers validate the whole message (``{"task": ..., "payload": {...}}``) with the
``*Message`` models, so a :class:`pydantic.ValidationError` names the field by its path,
e.g. ``payload.event``, and a message without a payload fails as ``payload: Field required``.
Unknown payload fields are refused, so a misspelled one is not silently ignored.
"""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue


class EventPayload(BaseModel):
    """``track_event``: one analytics event."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(
        min_length=1, max_length=200, description="The event's name, e.g. 'checkout'."
    )
    event_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Idempotency key: an event whose id is stored already is not stored "
        "again, so a redelivered message counts once. Default: a new UUID.",
    )
    user_id: str | None = Field(None, max_length=200, description="Who did it, if known.")
    properties: dict[str, JsonValue] = Field(
        default_factory=dict, description="Anything else about the event, as a JSON object."
    )
    timestamp: AwareDatetime | None = Field(
        None,
        description="When it happened: ISO 8601 with a time zone. Default: when it is stored.",
    )


class TrackEventMessage(BaseModel):
    payload: EventPayload
