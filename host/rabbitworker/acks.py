"""Acknowledgements, coalesced: fewer ``basic.ack`` frames, never an early one.

Every message finished in the same event-loop iteration is acked in one go. Delivery tags
are per channel and increase in delivery order, and ``basic.ack(multiple=True)`` acks every
outstanding tag up to the one named; so a multiple ack is sent only up to the lowest tag
whose handler has not finished. Finished messages above that tag get acks of their own at
once, so a slow message never holds back the acks (and the prefetch window) of the others.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger


class _ChannelAcks:
    """The delivery tags of one AMQP channel: outstanding (delivered, not yet settled) and
    finished (to be acked at the end of this loop iteration)."""

    __slots__ = ("channel", "finished", "outstanding", "scheduled", "writes")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.outstanding: set[int] = set()
        self.finished: set[int] = set()
        self.scheduled = False
        self.writes: set[asyncio.Task[None]] = set()


class AckBatcher:
    """The acks of one consumer. Call :meth:`delivered` first thing when a message arrives,
    then exactly one of :meth:`ack` or :meth:`forget` once it is settled."""

    def __init__(self, queue: str) -> None:
        self._queue = queue
        self._channels: dict[int, _ChannelAcks] = {}

    def _state(self, message: Any) -> _ChannelAcks:
        channel = message.channel
        state = self._channels.get(id(channel))
        if state is None or state.channel is not channel:
            # A new channel (after a reconnection): the old one's tags mean nothing any more.
            self._channels = {
                key: old for key, old in self._channels.items() if not old.channel.is_closed
            }
            state = self._channels[id(channel)] = _ChannelAcks(channel)
        return state

    def delivered(self, message: Any) -> None:
        """A message arrived; until it is settled, no multiple ack may cover its tag."""
        self._state(message).outstanding.add(message.delivery_tag)

    def ack(self, message: Any) -> None:
        """The message is done: ack it at the end of this loop iteration."""
        state = self._state(message)
        state.finished.add(message.delivery_tag)
        if not state.scheduled:
            state.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, state)

    def forget(self, message: Any) -> None:
        """The message was settled some other way (rejected) or abandoned."""
        self._state(message).outstanding.discard(message.delivery_tag)

    def _flush(self, state: _ChannelAcks) -> None:
        state.scheduled = False
        finished, state.finished = state.finished, set()
        if not finished:
            return
        unfinished = state.outstanding - finished
        state.outstanding -= finished
        lowest_unfinished = min(unfinished) if unfinished else None
        covered = {t for t in finished if lowest_unfinished is None or t < lowest_unfinished}
        acks: list[tuple[int, bool]] = []
        if covered:
            acks.append((max(covered), True))
        acks.extend((tag, False) for tag in sorted(finished - covered))
        for tag, multiple in acks:
            write = asyncio.get_running_loop().create_task(self._send(state.channel, tag, multiple))
            state.writes.add(write)
            write.add_done_callback(state.writes.discard)

    async def _send(self, channel: Any, tag: int, multiple: bool) -> None:
        try:
            await channel.basic_ack(delivery_tag=tag, multiple=multiple, wait=False)
        except Exception as exc:
            logger.warning(
                "[{}] could not ack up to delivery {} ({}: {}); the broker will deliver "
                "those messages again",
                self._queue,
                tag,
                type(exc).__name__,
                exc,
            )

    async def drain(self) -> None:
        """Send what is pending now and wait until it is written (before closing)."""
        for state in list(self._channels.values()):
            if state.scheduled:
                self._flush(state)
            if state.writes:
                await asyncio.gather(*state.writes, return_exceptions=True)
