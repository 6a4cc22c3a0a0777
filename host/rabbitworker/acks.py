"""Ack tracking for one consumer channel: which frames may be sent, and never an early one.

Delivery tags are per channel and increase in delivery order; ``basic.ack(multiple=True)``
acknowledges *every* outstanding tag up to the one named. So a multiple ack is only sent up
to the lowest tag that is still unsettled, and a tag the host gave up on (abandoned at
shutdown, or whose handler outlived the channel) stays in the way for good: it is returned
to the queue by the channel's close, never covered by an ack.

Why the channel's close and not ``basic.nack(requeue=True)``: on a quorum queue a nack puts
the message at the tail, while a closing channel returns it to the head; on a classic queue
both keep its place. One close returns all abandoned messages at once, in order.

:class:`AckTracker` is pure (no I/O): it turns settlements into the frames to write, and is
checked against a model of the broker's unacknowledged set by a hypothesis state machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FrameKind(StrEnum):
    ACK = "ack"
    #: ``basic.reject(requeue=False)``: only for a copy the broker refused for good; the
    #: queue's own dead-lettering takes the message.
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class AckFrame:
    """One frame to write; ``covers`` are the tags it settles (for reporting outcomes)."""

    kind: FrameKind
    tag: int
    multiple: bool = False
    covers: frozenset[int] = frozenset()


class UnknownDeliveryError(RuntimeError):
    """A tag was settled that this tracker never saw delivered, or settled twice."""


class AckTracker:
    """The settlement state of the deliveries of one channel (one *epoch*).

    Call :meth:`delivered` when a delivery arrives, then exactly one of :meth:`ack`,
    :meth:`reject` or :meth:`abandon` for it. :meth:`frames` returns what to write now.
    A new channel gets a new tracker: tags of the old one mean nothing there.
    """

    __slots__ = ("_abandoned", "_acked", "_outstanding", "_rejects")

    def __init__(self) -> None:
        #: Delivered and not yet written off by a frame (abandoned ones included).
        self._outstanding: set[int] = set()
        self._acked: set[int] = set()
        self._abandoned: set[int] = set()
        self._rejects: list[int] = []

    @property
    def outstanding(self) -> frozenset[int]:
        """Tags the broker still counts as unacknowledged once :meth:`frames` was written."""
        return frozenset(self._outstanding)

    @property
    def abandoned(self) -> frozenset[int]:
        return frozenset(self._abandoned)

    def delivered(self, tag: int) -> None:
        if tag in self._outstanding:
            raise UnknownDeliveryError(f"delivery tag {tag} delivered twice on one channel")
        self._outstanding.add(tag)

    def _settling(self, tag: int) -> None:
        if tag not in self._outstanding or tag in self._acked or tag in self._abandoned:
            raise UnknownDeliveryError(f"delivery tag {tag} is not awaiting settlement")
        if tag in self._rejects:
            raise UnknownDeliveryError(f"delivery tag {tag} is being rejected already")

    def ack(self, tag: int) -> None:
        """The message is done: acknowledge it with the next :meth:`frames`."""
        self._settling(tag)
        self._acked.add(tag)

    def reject(self, tag: int) -> None:
        """Reject without requeue (the queue's own dead-letter exchange takes it)."""
        self._settling(tag)
        self._rejects.append(tag)

    def abandon(self, tag: int) -> None:
        """Give up on the message: it stays unacknowledged until the channel closes."""
        self._settling(tag)
        self._abandoned.add(tag)

    @property
    def pending(self) -> bool:
        """Whether :meth:`frames` has anything to write."""
        return bool(self._acked or self._rejects)

    def frames(self) -> list[AckFrame]:
        """The frames that settle what was acked or rejected since the last call, in the
        order they must be written: rejects first, so no multiple ack can cover them."""
        out = [AckFrame(FrameKind.REJECT, tag, covers=frozenset({tag})) for tag in self._rejects]
        self._outstanding.difference_update(self._rejects)
        self._rejects.clear()
        if not self._acked:
            return out
        acked, self._acked = self._acked, set()
        blocked = self._outstanding - acked
        lowest_blocked = min(blocked) if blocked else None
        covered = [t for t in acked if lowest_blocked is None or t < lowest_blocked]
        covered_set = frozenset(covered)
        if covered:
            out.append(AckFrame(FrameKind.ACK, max(covered), len(covered) > 1, covers=covered_set))
        out.extend(
            AckFrame(FrameKind.ACK, t, covers=frozenset({t}))
            for t in sorted(acked)
            if t not in covered_set
        )
        self._outstanding -= acked
        return out
