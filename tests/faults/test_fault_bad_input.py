"""Malformed input never crashes the host: every fuzzed body is dead-lettered with the
specific reason for what is wrong with it, or handled if it happens to be valid.

Hypothesis draws the messages (each strategy knows the outcome it must get); they are all
published raw, as any AMQP client could, to one host run, and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import orjson
import pytest
from brokertools import AmqpClient
from fault_plugin import HANDLERS
from faultkit import DLQ, FaultRig, fault_queue, poll, publish_raw, take_tally
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.faults, pytest.mark.broker]

MAX_BYTES = 2048
TASKS = set(HANDLERS)
JSON_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "text/json",
    "text/plain",
    "application/vnd.example.task+json",
    # What generic clients send when they say nothing precise.
    "application/octet-stream",
]
WRONG_TYPES = [
    "application/xml",
    "text/html",
    "text/csv",
    "image/png",
    "application/json-seq",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
]

#: (body, content type, the outcome it must get: a dead-letter reason, or "handled")
Sample = tuple[bytes, str | None, str]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
json_content_types = st.sampled_from(JSON_TYPES)


def _dumps(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


def _parses(body: bytes) -> bool:
    """Whether both JSON parsers accept ``body`` (the host's, and the standard library's)."""
    try:
        orjson.loads(body)
        json.loads(body.decode("utf-8"))
    except ValueError:
        return False
    return True


def _rejected_by_both(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except ValueError:
        try:
            json.loads(body.decode("utf-8"))
        except ValueError:
            return True
    return False


@st.composite
def handled(draw: st.DrawFn) -> Sample:
    message = {"task": "accept", "payload": draw(json_values)}
    message.update(draw(st.dictionaries(st.sampled_from(["id", "meta", "x"]), json_values)))
    return _dumps(message, draw(st.booleans())), draw(json_content_types), "handled"


@st.composite
def not_an_object(draw: st.DrawFn) -> Sample:
    value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
    return _dumps(value, draw(st.booleans())), draw(json_content_types), "not-an-object"


@st.composite
def missing_task(draw: st.DrawFn) -> Sample:
    message = draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k != "task"), json_values))
    if draw(st.booleans()):
        message["task"] = None
    return _dumps(message, True), draw(json_content_types), "missing-task"


@st.composite
def invalid_task(draw: st.DrawFn) -> Sample:
    task = draw(json_values.filter(lambda v: v is not None and not isinstance(v, str)))
    return _dumps({"task": task, "payload": {}}, True), draw(json_content_types), "invalid-task"


@st.composite
def unknown_task(draw: st.DrawFn) -> Sample:
    task = draw(st.text(max_size=20).filter(lambda t: t not in TASKS))
    body = _dumps({"task": task, "payload": {}}, draw(st.booleans()))
    return body, draw(json_content_types), "unknown-task"


@st.composite
def invalid_payload(draw: st.DrawFn) -> Sample:
    # The typed handler wants {"id": int, "email": str}: never valid without "email".
    payload = draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k != "email"), json_values))
    return _dumps({"task": "validate", "payload": payload}, True), None, "invalid-payload"


@st.composite
def invalid_json(draw: st.DrawFn) -> Sample:
    text = draw(
        st.text(max_size=40)
        | st.builds(lambda v: json.dumps({"task": "accept", "payload": v})[:-1], json_values)
    )
    body = text.encode()
    if not _rejected_by_both(body):
        body = b"{" + body
    return body, draw(json_content_types), "invalid-json"


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Sample:
    raw = draw(st.binary(min_size=1, max_size=40))
    # \xff never appears in UTF-8; inside an otherwise valid message, or anywhere.
    body = b'{"task": "accept", "payload": "' + raw + b'\xff"}' if draw(st.booleans()) else raw
    if b"\xff" not in body and b"\xfe" not in body:
        body += b"\xff"
    return body, draw(json_content_types), "invalid-utf8"


@st.composite
def too_large(draw: st.DrawFn) -> Sample:
    size = draw(st.integers(min_value=MAX_BYTES + 1, max_value=4 * MAX_BYTES))
    body = _dumps({"task": "accept", "payload": "x" * size}, True)
    if draw(st.booleans()):
        body = draw(st.binary(min_size=size, max_size=size))
    # The size is checked first: whatever the content type.
    return body, draw(st.sampled_from(JSON_TYPES + WRONG_TYPES)), "too-large"


@st.composite
def wrong_content_type(draw: st.DrawFn) -> Sample:
    body = _dumps({"task": "accept", "payload": draw(json_values)}, True)
    return body, draw(st.sampled_from(WRONG_TYPES)), "wrong-content-type"


@st.composite
def arbitrary_bytes(draw: st.DrawFn) -> Sample:
    """Any short bytes, without a content type; the expected reason is worked out here."""
    body = draw(st.binary(max_size=48))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body, None, "invalid-utf8"
    if not _parses(body):
        expected = "invalid-json" if _rejected_by_both(body) else "ambiguous"
        return body, None, expected
    value = json.loads(text)
    if not isinstance(value, dict):
        return body, None, "not-an-object"
    task = value.get("task")
    if task is None:
        return body, None, "missing-task"
    if not isinstance(task, str):
        return body, None, "invalid-task"
    return body, None, "handled" if task == "accept" else "unknown-task"


samples = st.one_of(
    handled(),
    not_an_object(),
    missing_task(),
    invalid_task(),
    unknown_task(),
    invalid_payload(),
    invalid_json(),
    invalid_utf8(),
    too_large(),
    wrong_content_type(),
    arbitrary_bytes().filter(lambda sample: sample[2] != "ambiguous"),
)


def draw_batch() -> list[Sample]:
    """About a hundred samples from Hypothesis, collected for one host run."""
    batch: list[Sample] = []

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @example((b"", None, "invalid-json"))
    @example((b"\xef\xbb\xbf{}", "application/json", "invalid-json"))  # a UTF-8 BOM
    @example((b'"\\ud800"', None, "invalid-json"))  # a lone surrogate escape
    @example((b"null", None, "not-an-object"))
    @example((b'{"task": null}', None, "missing-task"))
    @example((b'{"task": ["accept"]}', None, "invalid-task"))
    @example((b'{"task": "accept"}', "application/json", "handled"))
    @given(samples)
    def collect(sample: Sample) -> None:
        body, content_type, outcome = sample
        # Size is checked before anything else, so a big enough sample of any kind is
        # too large first.
        batch.append((body, content_type, "too-large" if len(body) > MAX_BYTES else outcome))

    collect()
    return batch


async def test_malformed_messages_are_dead_lettered_with_a_specific_reason_and_never_crash(
    rig: FaultRig, amqp: AmqpClient
) -> None:
    host = await rig.start(
        [fault_queue(prefetch_count=20, max_retries=2, retry_delays=[0.2])],
        RABBITWORKER_MAX_MESSAGE_BYTES=str(MAX_BYTES),
    )
    pid = host.process.pid
    batch = draw_batch()
    expected: dict[str, str] = {}
    for index, (body, content_type, outcome) in enumerate(batch):
        message_id = f"fz-{index}"
        await publish_raw(amqp, body, message_id, content_type=content_type)
        expected[message_id] = outcome
    must_handle = {i for i, outcome in expected.items() if outcome == "handled"}

    async def all_settled() -> bool:
        return len(rig.handled()) + await amqp.ready(DLQ) >= len(expected)

    await poll(all_settled, within=30, message="every fuzzed message to be settled")
    assert host.process.poll() is None, "the host never crashed"
    assert host.process.pid == pid
    assert await host.async_stop() == 0

    tally = await take_tally(rig, amqp, expected)
    tally.check(
        published=len(batch),
        handled=len(must_handle),
        dead_lettered=len(batch) - len(must_handle),
        left=0,
    )
    assert tally.handled == must_handle
    wrong = {
        message_id: (expected[message_id], headers.get("x-rabbitworker-reason"))
        for message_id, headers in tally.dead.items()
        if headers.get("x-rabbitworker-reason") != expected[message_id]
    }
    assert not wrong, f"(expected, got) per message: {wrong}"
    for headers in tally.dead.values():
        assert headers["x-rabbitworker-attempts"] == 1, "bad input is never retried"
    kinds = Counter(expected.values())
    assert len(kinds) >= 10, f"the batch should cover most kinds of bad input: {kinds}"
