"""Ack tracking, against a model of what the broker believes.

The broker keeps, per channel, the set of delivered and unacknowledged tags. A multiple
ack settles every one of them up to its tag: if one of those is still being handled, or
was abandoned, that message is lost. A single ack of a tag the broker does not hold closes
the channel (PRECONDITION_FAILED). The state machine drives :class:`AckTracker` with random
deliveries, completions, rejects, abandons, flushes and channel reopens, applies the frames
it emits to the model, and checks that only finished messages are ever settled.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rabbitworker.acks import AckTracker, FrameKind, UnknownDeliveryError


class BrokerChannelModel:
    """What the broker holds for one channel, and what it did with each message."""

    def __init__(self) -> None:
        self.unacked: set[int] = set()
        self.acked: set[int] = set()
        self.rejected: set[int] = set()

    def ack(self, tag: int, multiple: bool) -> set[int]:
        if multiple:
            settled = {t for t in self.unacked if t <= tag}
            assert tag in self.unacked or settled, f"multiple ack up to {tag} settles nothing"
        else:
            assert tag in self.unacked, f"PRECONDITION_FAILED: unknown delivery tag {tag}"
            settled = {tag}
        self.unacked -= settled
        self.acked |= settled
        return settled

    def reject(self, tag: int) -> None:
        assert tag in self.unacked, f"PRECONDITION_FAILED: unknown delivery tag {tag}"
        self.unacked.discard(tag)
        self.rejected.add(tag)


class AckTracking(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tracker = AckTracker()
        self.broker = BrokerChannelModel()
        self.next_tag = 1
        self.running: set[int] = set()  # delivered, handler not done
        self.finished: set[int] = set()  # handler returned: may be acked
        self.to_reject: set[int] = set()
        self.abandoned: set[int] = set()
        self.returned: set[int] = set()  # given back to the queue by a channel close

    @rule()
    def deliver(self) -> None:
        tag = self.next_tag
        self.next_tag += 1
        self.tracker.delivered(tag)
        self.broker.unacked.add(tag)
        self.running.add(tag)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        tag = data.draw(st.sampled_from(sorted(self.running)))
        self.running.discard(tag)
        self.finished.add(tag)
        self.tracker.ack(tag)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        tag = data.draw(st.sampled_from(sorted(self.running)))
        self.running.discard(tag)
        self.to_reject.add(tag)
        self.tracker.reject(tag)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        tag = data.draw(st.sampled_from(sorted(self.running)))
        self.running.discard(tag)
        self.abandoned.add(tag)
        self.tracker.abandon(tag)

    @rule()
    def flush(self) -> None:
        for frame in self.tracker.frames():
            if frame.kind is FrameKind.REJECT:
                assert frame.tag in self.to_reject, f"rejected {frame.tag}, never asked to"
                self.broker.reject(frame.tag)
                assert frame.covers == {frame.tag}
            else:
                settled = self.broker.ack(frame.tag, frame.multiple)
                assert settled == set(frame.covers), "covers must be what the broker settled"
                early = settled - self.finished
                assert not early, f"acked {sorted(early)} before they finished"

    @rule()
    def channel_reopens(self) -> None:
        """The channel closed: the broker returns what it holds; a new tracker starts."""
        self.returned |= self.broker.unacked
        self.broker = BrokerChannelModel()
        self.tracker = AckTracker()
        self.running.clear()
        self.finished -= self.returned
        self.to_reject -= self.returned
        self.abandoned.clear()

    @invariant()
    def abandoned_messages_are_never_settled(self) -> None:
        assert not self.abandoned & self.broker.acked
        assert not self.abandoned & self.broker.rejected
        assert self.abandoned <= self.broker.unacked

    @invariant()
    def running_messages_are_never_settled(self) -> None:
        assert self.running <= self.broker.unacked

    @invariant()
    def the_tracker_agrees_with_the_broker_after_a_flush(self) -> None:
        if not self.tracker.pending:
            assert self.tracker.outstanding == self.broker.unacked


TestAckTracking = AckTracking.TestCase
TestAckTracking.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


def test_an_abandoned_tag_below_finished_ones_blocks_the_multiple_ack() -> None:
    tracker = AckTracker()
    for tag in (1, 2, 3):
        tracker.delivered(tag)
    tracker.abandon(1)
    tracker.ack(2)
    tracker.ack(3)
    frames = tracker.frames()
    assert [(f.tag, f.multiple) for f in frames] == [(2, False), (3, False)]
    assert tracker.outstanding == {1}


def test_finished_tags_below_the_lowest_unsettled_one_go_out_as_one_multiple_ack() -> None:
    tracker = AckTracker()
    for tag in range(1, 6):
        tracker.delivered(tag)
    for tag in (1, 2, 3, 5):
        tracker.ack(tag)
    frames = tracker.frames()
    assert [(f.tag, f.multiple) for f in frames] == [(3, True), (5, False)]


def test_a_reject_is_written_before_an_ack_that_could_cover_it() -> None:
    tracker = AckTracker()
    for tag in (1, 2):
        tracker.delivered(tag)
    tracker.reject(1)
    tracker.ack(2)
    kinds = [(f.kind, f.tag) for f in tracker.frames()]
    assert kinds[0] == (FrameKind.REJECT, 1)


def test_settling_a_tag_twice_is_refused() -> None:
    tracker = AckTracker()
    tracker.delivered(1)
    tracker.ack(1)
    with pytest.raises(UnknownDeliveryError):
        tracker.ack(1)
    with pytest.raises(UnknownDeliveryError):
        tracker.abandon(7)
