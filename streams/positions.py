"""Each stateful agent's own record of where it is in every source partition, and the rewind when
the consumer skipped messages.

Faust (faust-streaming 0.11-0.15) can skip messages of a partition that a worker keeps through a
rebalance: a message fetched in the old generation is dropped as stale but acknowledged
(`Stream._c_aiter` acks what it skips), a jump in the fetch position is recorded as a gap and
counted as acknowledged, and the committed offset then passes messages no agent handled
(faust-streaming issues 216, 221 and 312). tests/test_rebalance.py lost 84 of 6,397 commands that
way in one run: never answered, never decided.

So an agent does not take the consumer's word for its position. With each batch it stages, next
to its other table writes, the next offset it expects in each source partition (table
`positions`, key "<agent>/<topic>/<partition>", in the changelog partition of that source
partition, so whoever owns the partition owns its record). An event past that offset means the
messages in between were never handled: the agent leaves it, and the rest of that partition,
alone, seeks the partition back to the recorded offset, and goes on when that offset arrives.

An event before the recorded offset is a repeat after a restart or a rebalance, and is handled as
it always was (every agent is idempotent by its keys). The record is never a reason to skip:
the changelogs of different tables are not ordered against each other, so after a kill -9 it
may be ahead of what another table holds.

This relies on the source topics' offsets having no holes: they are neither compacted nor
written in transactions (streams/topics.py, streams/admin.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiokafka import TopicPartition

from streams import metrics
from streams.app import app
from streams.faust_fixes import seek_stream_partition
from tables.state import positions

log = logging.getLogger(__name__)

# While rewinding, events fetched before the seek keep arriving (the agent's queue, the batch the
# consumer was iterating). One of those can move Faust's read position past the seek again, after
# which it drops the offsets the seek asked for; seeking again once they stop fixes that.
RESEEK_AFTER_S = 0.25


@dataclass
class _Rewind:
    offset: int          # the offset the agent waits for
    generation: int      # a rebalance seeks every partition again: a rewind does not outlive it
    sought_at: float


class SourcePositions:
    def __init__(self, agent: str) -> None:
        self.agent = agent
        self._rewinds: dict[tuple[str, int], _Rewind] = {}

    async def admit(self, event, staged) -> bool:
        """True: handle the event (its position is staged). False: messages before it in its
        partition were never handled; leave it (the partition is being read again)."""
        message = event.message
        tp = (message.topic, message.partition)
        offset = message.offset
        rewind = self._rewinds.get(tp)
        if rewind is not None and rewind.generation != app.consumer_generation_id:
            del self._rewinds[tp]
            rewind = None
        key = f"{self.agent}/{message.topic}/{message.partition}"
        if rewind is not None:
            if offset != rewind.offset:
                if offset > rewind.offset and time.monotonic() - rewind.sought_at > RESEEK_AFTER_S:
                    await self._seek(tp, rewind)
                return False
            del self._rewinds[tp]
            log.info("%s: %s[%d] read again from %d", self.agent, message.topic, message.partition, offset)
        else:
            expected = staged.get(positions, key)
            if expected is not None and offset > expected:
                rewind = await self._start_rewind(tp, expected, offset)
                if rewind is not None:
                    return False
            elif expected is not None and offset < expected:
                return True                  # a repeat: the record stays where it is
        staged.set(positions, key, offset + 1)
        return True

    async def _start_rewind(self, tp: tuple[str, int], expected: int, offset: int) -> _Rewind | None:
        partition = TopicPartition(*tp)
        earliest = (await app.consumer.earliest_offsets(partition)).get(partition, 0)
        if earliest >= offset:
            log.error("%s: %s[%d] offsets %d-%d were deleted by retention before this agent handled them",
                      self.agent, tp[0], tp[1], expected, offset - 1)
            return None
        target = max(expected, earliest)
        metrics.child(metrics.SKIPPED_OFFSETS, self.agent).inc(offset - target)
        log.warning("%s: %s[%d] delivered offset %d but this agent has handled only up to %d: the consumer "
                    "skipped %d messages; reading them again", self.agent, tp[0], tp[1], offset, target - 1,
                    offset - target)
        rewind = _Rewind(target, app.consumer_generation_id, 0.0)
        self._rewinds[tp] = rewind
        await self._seek(tp, rewind)
        return rewind

    async def _seek(self, tp: tuple[str, int], rewind: _Rewind) -> None:
        rewind.sought_at = time.monotonic()
        await seek_stream_partition(app.consumer, TopicPartition(*tp), rewind.offset)
