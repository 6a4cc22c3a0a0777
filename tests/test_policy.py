"""The pure decisions of :mod:`rabbitworker.policy`: decoding, deciding, the copies' headers.

No broker and no event loop: every rule of what becomes of a message is a plain function.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from rabbitworker import PermanentError, QueueConfig
from rabbitworker.errors import InvalidPayloadError
from rabbitworker.events import DeadLetterReason, Settlement
from rabbitworker.policy import (
    HEADER_ATTEMPT,
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTERED_AT,
    HEADER_DELIVERY_COUNT,
    HEADER_ERROR,
    HEADER_EXCEPTION_MESSAGE,
    HEADER_EXCEPTION_TYPE,
    HEADER_QUEUE,
    HEADER_REASON,
    HEADER_TASK,
    MAX_HEADER_TEXT,
    Action,
    BadInput,
    Decision,
    Interrupted,
    Interruption,
    Raised,
    Refused,
    Returned,
    TimedOut,
    dead_letter_headers,
    decide,
    decode_task,
    delivery_limit_exceeded,
    retry_headers,
)

LIMIT = 1024
TASK = orjson.dumps({"task": "t", "payload": {}})


async def _handler(message: dict[str, Any]) -> None:
    return None


def queue(**overrides: Any) -> QueueConfig:
    return QueueConfig(
        **{"name": "q", "routing_key": "q", "task_handlers": {"t": _handler}, **overrides}
    )


def refusal(body: bytes, content_type: str | None = "application/json") -> DeadLetterReason:
    with pytest.raises(BadInput) as refused:
        decode_task(body, content_type, LIMIT)
    return refused.value.reason


def validation_error() -> ValidationError:
    class Model(BaseModel):
        n: int

    try:
        Model.model_validate({"n": "not a number"})
    except ValidationError as exc:
        return exc
    raise AssertionError("the model accepted a bad value")


# -- decode_task ---------------------------------------------------------------------------


def test_a_task_object_is_decoded_whole() -> None:
    body = {"task": "t", "payload": {"a": 1}, "extra": [1, 2]}

    assert decode_task(orjson.dumps(body), "application/json", LIMIT) == body


def test_a_body_over_the_limit_is_too_large() -> None:
    assert refusal(b" " * (LIMIT - len(TASK) + 1) + TASK) is DeadLetterReason.TOO_LARGE


def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    body = TASK + b" " * (LIMIT - len(TASK))

    assert decode_task(body, "application/json", LIMIT)["task"] == "t"


def test_the_size_is_checked_before_the_content_type() -> None:
    assert refusal(b"x" * (LIMIT + 1), "application/xml") is DeadLetterReason.TOO_LARGE


@pytest.mark.parametrize(
    "content_type", ["application/xml", "text/html", "application/msgpack", "image/png"]
)
def test_a_declared_non_json_content_type_is_a_wrong_content_type(content_type: str) -> None:
    assert refusal(TASK, content_type) is DeadLetterReason.WRONG_CONTENT_TYPE


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "APPLICATION/JSON",
        "application/json; charset=utf-8",
        "text/json",
        "text/plain",
        "application/octet-stream",
        "binary/octet-stream",
        "application/vnd.api+json",
        "application/cloudevents+json; charset=utf-8",
    ],
)
def test_json_generic_and_plus_json_content_types_are_accepted(content_type: str | None) -> None:
    assert decode_task(TASK, content_type, LIMIT) == {"task": "t", "payload": {}}


def test_bytes_that_are_not_utf8_are_invalid_utf8() -> None:
    assert refusal(b'{"task": "\xff\xfe"}') is DeadLetterReason.INVALID_UTF8


def test_utf8_that_is_not_json_is_invalid_json() -> None:
    assert refusal(b"{task: t}") is DeadLetterReason.INVALID_JSON


def test_an_empty_body_is_invalid_json() -> None:
    assert refusal(b"") is DeadLetterReason.INVALID_JSON


@pytest.mark.parametrize("body", [b"[]", b'["task"]', b'"task"', b"1", b"null", b"true"])
def test_json_that_is_not_an_object_is_not_an_object(body: bytes) -> None:
    assert refusal(body) is DeadLetterReason.NOT_AN_OBJECT


@pytest.mark.parametrize("body", [b"{}", b'{"payload": {}}', b'{"task": null}'])
def test_an_object_without_a_task_is_missing_task(body: bytes) -> None:
    assert refusal(body) is DeadLetterReason.MISSING_TASK


@pytest.mark.parametrize("task", [1, 1.5, True, ["t"], {"name": "t"}])
def test_a_task_that_is_not_a_string_is_an_invalid_task(task: Any) -> None:
    assert refusal(orjson.dumps({"task": task})) is DeadLetterReason.INVALID_TASK


def test_a_refusal_says_what_is_wrong() -> None:
    with pytest.raises(BadInput) as refused:
        decode_task(TASK, "application/xml", LIMIT)

    assert "application/xml" in refused.value.detail
    assert str(refused.value) == refused.value.detail


# -- decide: handlers that returned ----------------------------------------------------------


def test_a_returned_handler_is_acked_with_its_result() -> None:
    decision = decide(queue(max_retries=3), 1, Returned({"sent": True}))

    assert (decision.action, decision.result, decision.reason) == (
        Action.ACK,
        {"sent": True},
        None,
    )
    assert decision.settlement is Settlement.ACKED


def test_a_returned_handler_is_acked_even_on_its_last_attempt() -> None:
    assert decide(queue(max_retries=2), 3, Returned()).action is Action.ACK


# -- decide: handlers that raised ------------------------------------------------------------


def test_a_plain_error_is_retried_while_attempts_remain() -> None:
    error = ValueError("bad address")

    decision = decide(queue(max_retries=2), 2, Raised(error))

    assert decision.action is Action.RETRY
    assert decision.settlement is Settlement.RETRIED
    assert decision.reason is DeadLetterReason.HANDLER_ERROR
    assert decision.detail == "ValueError: bad address"
    assert decision.exception is error


def test_a_plain_error_is_dead_lettered_once_the_retries_are_spent() -> None:
    error = ValueError("bad address")

    decision = decide(queue(max_retries=2), 3, Raised(error))

    assert (decision.action, decision.reason) == (
        Action.DEAD_LETTER,
        DeadLetterReason.HANDLER_ERROR,
    )
    assert decision.settlement is Settlement.DEAD_LETTERED
    assert decision.exception is error
    assert (decision.retry_in, decision.retry_queue) == (None, None)


def test_a_plain_error_without_retries_is_dead_lettered_at_once() -> None:
    assert decide(queue(), 1, Raised(RuntimeError("x"))).action is Action.DEAD_LETTER


@pytest.mark.parametrize(
    ("attempt", "delay", "retry_queue"),
    [(1, 1.0, "q.retry.1000ms"), (2, 10.0, "q.retry.10000ms"), (3, 60.0, "q.retry.60000ms")],
)
def test_a_retry_waits_the_configured_delay_in_its_delay_queue(
    attempt: int, delay: float, retry_queue: str
) -> None:
    config = queue(max_retries=3, retry_delays=[1, 10, 60])

    decision = decide(config, attempt, Raised(ValueError()))

    assert (decision.retry_in, decision.retry_queue) == (delay, retry_queue)


def test_the_last_retry_delay_repeats_for_later_retries() -> None:
    config = queue(max_retries=5, retry_delays=[0.5, 2])

    decision = decide(config, 4, Raised(ValueError()))

    assert (decision.retry_in, decision.retry_queue) == (2.0, "q.retry.2000ms")


@pytest.mark.parametrize(
    ("attempt", "delay", "retry_queue"),
    [(1, 1.5, "q.retry.1500ms"), (2, 3.0, "q.retry.3000ms"), (3, 4.0, "q.retry.4000ms")],
)
def test_without_retry_delays_the_backoff_doubles_up_to_its_cap(
    attempt: int, delay: float, retry_queue: str
) -> None:
    config = queue(max_retries=10, retry_backoff=1.5, retry_backoff_max=4)

    decision = decide(config, attempt, Raised(ValueError()))

    assert (decision.retry_in, decision.retry_queue) == (delay, retry_queue)


def test_the_default_backoff_starts_at_one_second() -> None:
    decision = decide(queue(max_retries=1), 1, Raised(ValueError()))

    assert (decision.retry_in, decision.retry_queue) == (1.0, "q.retry.1000ms")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PermanentError("record deleted"), DeadLetterReason.PERMANENT_ERROR),
        (InvalidPayloadError("no name"), DeadLetterReason.INVALID_PAYLOAD),
        (validation_error(), DeadLetterReason.INVALID_PAYLOAD),
    ],
    ids=["PermanentError", "InvalidPayloadError", "ValidationError"],
)
def test_errors_another_try_cannot_fix_are_dead_lettered_at_once(
    error: Exception, reason: DeadLetterReason
) -> None:
    decision = decide(queue(max_retries=5), 1, Raised(error))

    assert (decision.action, decision.reason) == (Action.DEAD_LETTER, reason)
    assert decision.exception is error
    assert decision.detail == f"{type(error).__name__}: {error}"


def test_a_subclass_of_permanent_error_is_permanent_too() -> None:
    class RecordGone(PermanentError):
        pass

    decision = decide(queue(max_retries=5), 1, Raised(RecordGone("gone")))

    assert decision.reason is DeadLetterReason.PERMANENT_ERROR


@given(max_retries=st.integers(0, 50))
def test_a_handler_that_always_fails_is_retried_exactly_max_retries_times(
    max_retries: int,
) -> None:
    config = queue(max_retries=max_retries)
    actions = []
    attempt = 1
    while True:
        decision = decide(config, attempt, Raised(ValueError("again")))
        actions.append(decision.action)
        if decision.action is not Action.RETRY:
            break
        attempt += 1

    assert actions == [Action.RETRY] * max_retries + [Action.DEAD_LETTER]


@given(max_retries=st.integers(0, 50), attempt=st.integers(1, 200))
def test_a_failure_is_retried_exactly_when_attempts_remain(max_retries: int, attempt: int) -> None:
    decision = decide(queue(max_retries=max_retries), attempt, Raised(ValueError()))

    expected = Action.RETRY if attempt <= max_retries else Action.DEAD_LETTER
    assert decision.action is expected
    assert (decision.retry_in is not None) == (expected is Action.RETRY)


@given(
    max_retries=st.integers(0, 20),
    attempt=st.integers(1, 40),
    error=st.sampled_from([PermanentError("p"), InvalidPayloadError("i")]),
)
def test_a_permanent_failure_is_never_retried(
    max_retries: int, attempt: int, error: Exception
) -> None:
    assert decide(queue(max_retries=max_retries), attempt, Raised(error)).action is (
        Action.DEAD_LETTER
    )


# -- decide: timeouts, interruptions, refusals ---------------------------------------------


def test_a_timed_out_handler_is_retried_while_attempts_remain() -> None:
    decision = decide(queue(max_retries=1, retry_delays=[5]), 1, TimedOut(2.5))

    assert (decision.action, decision.reason, decision.retry_queue) == (
        Action.RETRY,
        DeadLetterReason.TIMEOUT,
        "q.retry.5000ms",
    )
    assert decision.detail is not None
    assert "2.5" in decision.detail


def test_a_timed_out_handler_is_dead_lettered_as_timeout_once_the_retries_are_spent() -> None:
    decision = decide(queue(max_retries=1), 2, TimedOut(2.5))

    assert (decision.action, decision.reason) == (Action.DEAD_LETTER, DeadLetterReason.TIMEOUT)
    assert isinstance(decision.exception, TimeoutError)
    assert "handler_timeout=2.5" in str(decision.exception)


@pytest.mark.parametrize("why", list(Interruption))
def test_an_interrupted_handler_is_left_for_redelivery(why: Interruption) -> None:
    decision = decide(queue(max_retries=3), 1, Interrupted(why))

    assert decision.action is Action.LEAVE
    assert decision.settlement is Settlement.UNSETTLED
    assert decision.detail == why.value
    assert decision.reason is None


def test_an_interrupted_handler_is_left_even_on_its_last_attempt() -> None:
    # Its work is unfinished, whatever the handler did after the host cancelled it: it is
    # neither acked nor dead-lettered, however many attempts were used.
    decision = decide(queue(max_retries=0), 1, Interrupted(Interruption.SHUTDOWN))

    assert decision.action is Action.LEAVE


@pytest.mark.parametrize(
    "reason",
    [r for r in DeadLetterReason if not r.retryable],
)
def test_a_refused_message_is_dead_lettered_with_its_reason_and_never_retried(
    reason: DeadLetterReason,
) -> None:
    decision = decide(queue(max_retries=5), 1, Refused(reason, "why"))

    assert (decision.action, decision.reason, decision.detail) == (
        Action.DEAD_LETTER,
        reason,
        "why",
    )
    assert decision.exception is None


@pytest.mark.parametrize("reason", [DeadLetterReason.HANDLER_ERROR, DeadLetterReason.TIMEOUT])
def test_a_refusal_is_not_retried_even_with_a_retryable_reason(reason: DeadLetterReason) -> None:
    assert decide(queue(max_retries=5), 1, Refused(reason, "why")).action is Action.DEAD_LETTER


def test_only_handler_errors_and_timeouts_are_retryable() -> None:
    assert {r for r in DeadLetterReason if r.retryable} == {
        DeadLetterReason.HANDLER_ERROR,
        DeadLetterReason.TIMEOUT,
    }


# -- delivery_limit_exceeded ---------------------------------------------------------------


def test_a_message_returned_exactly_delivery_limit_times_is_handled_again() -> None:
    assert delivery_limit_exceeded(queue(delivery_limit=3), returns=3, clean_returns=0) is None


def test_a_message_returned_once_more_than_delivery_limit_is_refused() -> None:
    refused = delivery_limit_exceeded(queue(delivery_limit=3), returns=4, clean_returns=0)

    assert refused is not None
    assert refused.reason is DeadLetterReason.DELIVERY_LIMIT
    assert "delivered 5 times" in refused.detail
    assert "delivery_limit is 3" in refused.detail


def test_clean_shutdown_returns_do_not_count_as_crashes() -> None:
    config = queue(delivery_limit=3)

    assert delivery_limit_exceeded(config, returns=10, clean_returns=7) is None
    assert delivery_limit_exceeded(config, returns=10, clean_returns=6) is not None


def test_a_delivery_limit_of_zero_refuses_the_first_crash() -> None:
    config = queue(delivery_limit=0)

    assert delivery_limit_exceeded(config, returns=0, clean_returns=0) is None
    assert delivery_limit_exceeded(config, returns=1, clean_returns=0) is not None


@given(limit=st.integers(0, 30), crashes=st.integers(0, 60), clean=st.integers(0, 60))
def test_a_message_is_refused_exactly_when_its_crashes_pass_the_limit(
    limit: int, crashes: int, clean: int
) -> None:
    refused = delivery_limit_exceeded(
        queue(delivery_limit=limit), returns=crashes + clean, clean_returns=clean
    )

    assert (refused is not None) == (crashes > limit)


# -- the headers of copies -----------------------------------------------------------------


def _failed(detail: str = "ValueError: bad", error: BaseException | None = None) -> Decision:
    return Decision(
        Action.DEAD_LETTER,
        DeadLetterReason.HANDLER_ERROR,
        detail,
        ValueError("bad") if error is None else error,
    )


def _dead_headers(headers: dict[str, Any], decision: Decision | None = None) -> dict[str, Any]:
    return dead_letter_headers(
        headers,
        queue="q",
        exchange="tasks",
        task="t",
        attempt=3,
        decision=decision or _failed(),
        now=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_a_retry_copy_counts_the_next_attempt_and_says_why() -> None:
    decision = decide(queue(max_retries=3), 2, Raised(ValueError("bad")))

    headers = retry_headers({"trace": "abc", HEADER_ATTEMPT: 2}, 2, decision)

    assert headers == {
        "trace": "abc",
        HEADER_ATTEMPT: 3,
        HEADER_REASON: "handler-error",
        HEADER_ERROR: "ValueError: bad",
    }


def test_a_retry_copy_drops_the_brokers_delivery_count() -> None:
    decision = decide(queue(max_retries=3), 1, Raised(ValueError()))

    assert HEADER_DELIVERY_COUNT not in retry_headers({HEADER_DELIVERY_COUNT: 4}, 1, decision)


def test_a_retry_copy_leaves_the_original_headers_unchanged() -> None:
    original = {HEADER_DELIVERY_COUNT: 4}

    retry_headers(original, 1, decide(queue(max_retries=3), 1, Raised(ValueError())))

    assert original == {HEADER_DELIVERY_COUNT: 4}


def test_a_retry_copy_cuts_a_long_error_to_the_header_limit() -> None:
    decision = decide(queue(max_retries=3), 1, Raised(ValueError("x" * 10_000)))

    error = retry_headers({}, 1, decision)[HEADER_ERROR]

    assert len(error) == MAX_HEADER_TEXT
    assert error.endswith("…")


def test_a_dead_letter_names_its_queue_reason_task_attempts_and_exception() -> None:
    headers = _dead_headers({"trace": "abc"})

    assert headers == {
        "trace": "abc",
        "x-first-death-queue": "q",
        "x-first-death-reason": "rejected",
        "x-first-death-exchange": "tasks",
        HEADER_QUEUE: "q",
        HEADER_REASON: "handler-error",
        HEADER_ERROR: "ValueError: bad",
        HEADER_ATTEMPTS: 3,
        HEADER_DEAD_LETTERED_AT: "2024-01-02T03:04:05+00:00",
        HEADER_TASK: "t",
        HEADER_EXCEPTION_TYPE: "ValueError",
        HEADER_EXCEPTION_MESSAGE: "bad",
    }


def test_a_dead_letter_drops_the_brokers_delivery_count() -> None:
    assert HEADER_DELIVERY_COUNT not in _dead_headers({HEADER_DELIVERY_COUNT: 6})


def test_a_dead_letter_keeps_first_death_headers_already_there() -> None:
    first = {
        "x-first-death-queue": "orders",
        "x-first-death-reason": "expired",
        "x-first-death-exchange": "orders.x",
    }

    headers = _dead_headers(dict(first))

    assert {k: headers[k] for k in first} == first
    assert headers[HEADER_QUEUE] == "q"


def test_a_dead_letter_cuts_long_texts_to_the_header_limit() -> None:
    long = "y" * (MAX_HEADER_TEXT * 3)

    headers = _dead_headers({}, _failed(detail=long, error=RuntimeError(long)))

    for name in (HEADER_ERROR, HEADER_EXCEPTION_MESSAGE):
        assert len(headers[name]) == MAX_HEADER_TEXT
        assert headers[name] == long[: MAX_HEADER_TEXT - 1] + "…"


def test_a_text_of_exactly_the_header_limit_is_kept_whole() -> None:
    exact = "z" * MAX_HEADER_TEXT

    headers = _dead_headers({}, _failed(detail=exact))

    assert headers[HEADER_ERROR] == exact


def test_a_dead_letter_names_a_nested_exception_class_by_its_qualified_name() -> None:
    class Outer:
        class Broken(Exception):
            pass

    headers = _dead_headers({}, _failed(error=Outer.Broken("inner")))

    assert headers[HEADER_EXCEPTION_TYPE].endswith("Outer.Broken")
    assert headers[HEADER_EXCEPTION_MESSAGE] == "inner"


def test_a_refused_dead_letter_has_no_exception_headers_and_no_task_when_unknown() -> None:
    decision = decide(queue(), 1, Refused(DeadLetterReason.INVALID_JSON, "body is not JSON"))

    headers = dead_letter_headers(
        {}, queue="q", exchange="tasks", task=None, attempt=1, decision=decision
    )

    assert headers[HEADER_REASON] == "invalid-json"
    assert headers[HEADER_ERROR] == "body is not JSON"
    assert not {HEADER_TASK, HEADER_EXCEPTION_TYPE, HEADER_EXCEPTION_MESSAGE} & headers.keys()


def test_a_dead_letter_of_a_timeout_says_timeout_error() -> None:
    decision = decide(queue(), 1, TimedOut(3))

    headers = _dead_headers({}, decision)

    assert (headers[HEADER_REASON], headers[HEADER_EXCEPTION_TYPE]) == ("timeout", "TimeoutError")
