"""Which ticks partitions this instance owns, and what happens when that changes.

Assigned: start the partitions' transactional producers first (that fences any previous
owner and aborts its open transaction), then restore their symbols from the state topic
(`streamer.serve.recovery`). Revoked: checkpoint them for the next owner, then drop their
state. Fenced (another instance took them over while this one was stalled or frozen):
drop their state at once, never publish from it, and rejoin.

aiokafka calls the rebalance callbacks from its coordinator task and only logs what they
raise, so a failure is kept (`_failure`) and re-raised by the batch loop, which ends the
session: the next session restores every partition from Kafka.

`PartitionOwnership` is a base class of `streamer.serve.processor.StreamProcessor`, which
provides the attributes declared here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.structs import TopicPartition

from streamer.core.checkpoints import PartitionProgress
from streamer.core.engine import Engine
from streamer.metrics import Metrics
from streamer.serve.publish import BatchCommit, Fenced, Publisher
from streamer.serve.recovery import restore_partition
from streamer.settings import Settings

__all__ = ["Counters", "Listener", "PartitionOwnership"]

log = logging.getLogger("streamer.serve.processor")


@dataclass
class Counters:
    """Counters of this process (tests read them; Prometheus has the same)."""

    batches: int = 0
    ticks: int = 0
    forecasts: int = 0
    rejected: int = 0
    skipped: int = 0  # non-tick messages of the format (acks, heartbeats, open klines)
    replayed: int = 0
    sessions: int = 0
    assigned: list[list[int]] = field(default_factory=list)


class PartitionOwnership:
    """Assignment, revocation and fencing of ticks partitions (see the module doc)."""

    settings: Settings
    engine: Engine
    metrics: Metrics
    counters: Counters
    lock: asyncio.Lock
    parts: dict[int, PartitionProgress]
    ready: bool
    _consumer: AIOKafkaConsumer | None
    _restorer: AIOKafkaConsumer | None
    _publisher: Publisher | None
    _stopping: bool
    _failure: BaseException | None
    _assigned_at: dict[int, float]
    _why: str

    async def _drain(self) -> None:
        raise NotImplementedError

    async def _send(self, out: BatchCommit) -> None:
        raise NotImplementedError

    def _outgoing(
        self,
        *,
        advanced: dict[int, int] | None = None,
        force_checkpoint: bool = False,
        only: list[int] | None = None,
    ) -> BatchCommit:
        raise NotImplementedError

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        async with self.lock:
            try:
                mine = sorted(
                    tp.partition for tp in partitions if tp.topic == self.settings.ticks_topic
                )
                now = time.monotonic()
                self._assigned_at.update((p, now) for p in mine)
                self.counters.assigned.append(mine)
                self.metrics.rebalances.inc()
                log.info(
                    "rebalance (%s): assigned ticks partitions %s as %s",
                    self._why, mine, self.settings.client_id,
                )  # fmt: skip
                self._why = "rebalance: a member joined, left or timed out"
                assert self._restorer is not None and self._consumer is not None
                assert self._publisher is not None
                # Fence first: starting the partitions' producers aborts any transaction a
                # previous owner left open, so the state and offsets restored next are final.
                await self._publisher.open(mine)
                for p in mine:
                    self.parts[p] = await restore_partition(
                        p, settings=self.settings, engine=self.engine, restorer=self._restorer,
                        consumer=self._consumer, metrics=self.metrics,
                    )  # fmt: skip
                self.metrics.active_symbols.set(len(self.engine))
                self.ready = True
            except Exception as e:
                self._failure = self._failure or e

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        async with self.lock:
            topic = self.settings.ticks_topic
            revoked = sorted(tp.partition for tp in partitions if tp.topic == topic)
            mine = [p for p in revoked if p in self.parts]
            if not revoked:
                return
            if self._publisher is not None and not mine:  # assigned, but never restored
                await self._publisher.close(revoked)
                return
            log.info("revoking ticks partitions %s: checkpointing them for the next owner", mine)
            try:
                if not self._stopping and self._publisher is not None and self._failure is None:
                    await self._drain()
                    await self._send(self._outgoing(force_checkpoint=True, only=mine))
            except Fenced:
                # Another instance took them over already (this one was expelled): nothing
                # was committed, their state is dropped, and this rebalance is the rejoin.
                self._why = "rejoining after being fenced"
            except Exception as e:
                self._failure = self._failure or e
            finally:
                self.engine.drop_partitions(mine)
                for p in mine:
                    self.parts.pop(p, None)
                    self._assigned_at.pop(p, None)
                self.metrics.active_symbols.set(len(self.engine))
                if self._publisher is not None:
                    await self._publisher.close(revoked)

    def _lose(self, fenced: list[int]) -> None:
        """Drop fenced partitions at once: never publish from their state again."""
        self.metrics.fenced.inc(len(fenced))
        lost = [p for p in fenced if p in self.parts]
        self.engine.drop_partitions(lost)
        for p in lost:
            self.parts.pop(p, None)
            self._assigned_at.pop(p, None)
        self.metrics.active_symbols.set(len(self.engine))
        log.warning(
            "ticks partitions %s fenced: another instance took them over while this one held "
            "them (expelled from the group: stalled or frozen past session_timeout_ms=%d); "
            "their transaction in flight is aborted and their state dropped; rejoining",
            fenced, self.settings.session_timeout_ms,
        )  # fmt: skip


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance listener, forwarding to a `PartitionOwnership`."""

    def __init__(self, server: PartitionOwnership) -> None:
        self.server = server

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.server.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.server.assigned(assigned)
