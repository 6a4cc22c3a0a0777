"""Browsing a DLQ page by page (rabbitworker.console.letters) against a real broker: the
right slice, exact counts, and the DLQ exactly as it was afterwards."""

from __future__ import annotations

import pytest
from consoletools import Letter, fill_dlq, run_async
from opstools import DLQ

from rabbitworker import dlq
from rabbitworker.console.letters import LetterFilter, find, page
from rabbitworker.events import DeadLetterReason

pytestmark = pytest.mark.broker


def letters(count: int) -> list[Letter]:
    return [
        Letter(
            f"m-{i:04d}",
            "other.q" if i % 4 == 0 else "probe.q",
            "work" if i % 3 == 0 else "fail",
            {"id": f"m-{i:04d}", "n": i},
            error="disk full" if i % 5 == 0 else "probe failure",
            reason=DeadLetterReason.TIMEOUT if i % 7 == 0 else DeadLetterReason.HANDLER_ERROR,
        )
        for i in range(count)
    ]


async def ids_in_order(url: str) -> list[str | None]:
    return [letter.message_id for letter in await dlq.show(url, DLQ)]


def test_a_page_is_the_slice_asked_for_and_the_dlq_keeps_its_order_and_count(
    declared: str,
) -> None:
    run_async(fill_dlq(declared, letters(200)))
    before = run_async(ids_in_order(declared))

    shown = run_async(page(declared, DLQ, LetterFilter(), offset=50, limit=25))

    assert (shown.depth, shown.matched) == (200, 200)
    assert [row["message_id"] for row in shown.letters] == before[50:75]
    assert [row["position"] for row in shown.letters] == list(range(51, 76))
    assert run_async(ids_in_order(declared)) == before


def test_a_filtered_page_counts_every_match_and_keeps_only_its_page(declared: str) -> None:
    written = letters(200)
    run_async(fill_dlq(declared, written))
    wanted = LetterFilter(queue="other.q", text="disk")
    expected = [w.message_id for w in written if w.queue == "other.q" and "disk" in w.error]

    shown = run_async(page(declared, DLQ, wanted, offset=2, limit=3))

    assert shown.matched == len(expected)
    assert [row["message_id"] for row in shown.letters] == expected[2:5]
    assert shown.letters[0]["exception_type"] == "ValueError"
    assert shown.letters[0]["exception_message"] == "disk full"
    assert run_async(dlq.show(declared, DLQ)).__len__() == 200


def test_one_message_is_read_in_full_with_its_headers_and_left_in_place(declared: str) -> None:
    run_async(fill_dlq(declared, letters(30)))
    before = run_async(ids_in_order(declared))

    found = run_async(find(declared, DLQ, "m-0020"))

    assert found is not None
    assert found["position"] == 21
    assert found["body"] == {"task": "fail", "payload": {"id": "m-0020", "n": 20}}
    assert found["headers"]["x-rabbitworker-queue"] == "other.q"
    assert run_async(ids_in_order(declared)) == before


def test_replay_select_moves_only_the_chosen_and_keeps_the_rest_in_order(declared: str) -> None:
    run_async(fill_dlq(declared, letters(20)))
    before = run_async(ids_in_order(declared))
    chosen = {"m-0001", "m-0005", "m-0010"}

    report = run_async(dlq.replay(declared, DLQ, select=lambda d: d.message_id in chosen))

    assert (report.replayed, report.failed) == (3, 0)
    assert run_async(ids_in_order(declared)) == [i for i in before if i not in chosen]
