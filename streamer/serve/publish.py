"""The per-batch commit: forecasts, dead letters, state records and consumed offsets go to
Kafka together, in one transaction per ticks partition (exactly-once), or sent,
acknowledged, then committed in that order (at-least-once).

`BatchCommit` is what one micro-batch commits (built by the processor and the checkpoint
planner); `Publisher` sends it. Exactly-once, each assigned ticks partition has its own
transactional producer, `transactional.id` = `tickcast-<group>-<ticks topic>-<partition>`
(Kafka Streams' scheme before KIP-447): whichever instance is assigned the partition next
opens a producer with the same id, and its `init_transactions` fences the previous owner
(its open transaction is aborted at once, and it can never commit again). A micro-batch
spanning several partitions is one transaction per partition, begun and committed
concurrently: each holds that partition's forecasts (to forecasts partition p mod n), dead
letters, state records and marker (state partition p), and offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced, UnknownError
from aiokafka.structs import TopicPartition

from streamer.core.checkpoints import Record
from streamer.core.state_records import MARKER_KEY
from streamer.kafka.topics import partitions_of
from streamer.metrics import Metrics
from streamer.settings import Settings

__all__ = [
    "MAX_RECORD_BYTES",
    "BatchCommit",
    "Fenced",
    "Publisher",
    "make_producer",
    "transactional_id",
]

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1 << 20


@dataclass
class BatchCommit:
    """What one batch commits: forecasts, dead letters, state records, offsets."""

    offsets: dict[int, int]  # ticks partition -> next offset to commit
    symbols: list[str] = field(default_factory=list)  # forecasts' symbols (their keys)
    values: list[bytes] = field(default_factory=list)  # forecast payloads
    parts: list[int] = field(default_factory=list)  # their ticks partition
    stamps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # tick ms
    points: np.ndarray | None = None  # [n, 5] snapshot points for the hub
    # (key, original value, ticks partition, headers) of each dead letter
    dead: list[tuple[bytes | None, bytes, int, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )
    state: dict[int, list[Record]] = field(default_factory=dict)  # state partition -> records
    compute_s: float = 0.0  # time the batch took to compute (seconds)

    def partitions(self) -> set[int]:
        """The ticks partitions this commit touches."""
        return {*self.offsets, *self.parts, *(d[2] for d in self.dead), *self.state}

    def split(self) -> dict[int, BatchCommit]:
        """What each ticks partition commits (its forecasts, dead letters, state records and
        offset; a state partition is its ticks partition's number). The parts carry no
        stamps or points: those are for the hub, which gets the whole batch."""
        subs = {
            p: BatchCommit(
                offsets={p: self.offsets[p]} if p in self.offsets else {},
                state={p: self.state[p]} if p in self.state else {},
            )
            for p in self.partitions()
        }
        for sym, value, p in zip(self.symbols, self.values, self.parts, strict=True):
            sub = subs[p]
            sub.symbols.append(sym)
            sub.values.append(value)
            sub.parts.append(p)
        for d in self.dead:
            subs[d[2]].dead.append(d)
        return subs


class Fenced(Exception):
    """Another instance took these ticks partitions over: their producers were fenced (a
    newer producer with the same transactional id was initialised), so their transactions
    in flight were aborted and this instance must drop their state."""

    def __init__(self, partitions: list[int]) -> None:
        super().__init__(f"partitions {partitions} fenced: another instance owns them now")
        self.partitions = partitions


def transactional_id(s: Settings, partition: int) -> str:
    """The transactional id of ticks partition `partition`'s producer, the same on every
    instance of the group: the one assigned the partition fences the one before."""
    return f"tickcast-{s.group_id}-{s.ticks_topic}-{partition}"


def make_producer(s: Settings, partition: int | None = None) -> AIOKafkaProducer:
    """An idempotent producer; transactional (for ticks partition `partition`) when
    `exactly_once` and a partition is given."""
    transactional = s.exactly_once and partition is not None
    return AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap,
        client_id=f"{s.client_id}-p{partition}" if partition is not None else s.client_id,
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id(s, partition)
        if transactional and partition is not None
        else None,
        transaction_timeout_ms=15000,
        # CONCURRENT_TRANSACTIONS on a partition already in the transaction backs off by
        # this (see `streamer.kafka.tuning`): 100 ms by default, far above a batch's budget.
        retry_backoff_ms=10,
        max_batch_size=MAX_RECORD_BYTES,
        max_request_size=4 * MAX_RECORD_BYTES,
        linger_ms=0,
    )


# Kafka >= 2.7 answers a fenced producer's EndTxn and AddPartitionsToTxn with PRODUCER_FENCED
# (error 90, KIP-588), a code aiokafka 0.14 does not know: it raises UnknownError (-1), which
# kills the producer's sender ("Unexpected error during batch delivery"). From a
# transactional producer's request that is, in practice, a fence.
_FENCED = (ProducerFenced, InvalidProducerEpoch, UnknownError)


def _causes(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _is_fenced(producer: AIOKafkaProducer, exc: BaseException) -> bool:
    """Did `exc` come from a fence? aiokafka raises the fence once (to whichever call waits
    first); later calls on the producer fail on its fatal state (IllegalOperation,
    AssertionError), so that state is read too (a private attribute, read only here). The
    transaction's own waiter holds the error as well: it is retrieved here, or asyncio
    would log it as never retrieved."""
    txn = getattr(producer, "_txn_manager", None)
    waiter = txn.wait_for_transaction_end() if txn is not None else None
    cause = (
        waiter.exception()
        if waiter is not None and waiter.done() and not waiter.cancelled()
        else None
    )
    if any(isinstance(e, _FENCED) for e in _causes(exc)):
        return True
    return bool(
        txn is not None
        and txn.is_fatal_error()
        and any(isinstance(e, _FENCED) for e in _causes(cause))
    )


class Publisher:
    """Commits `BatchCommit`s: exactly-once with one transactional producer per assigned
    ticks partition (`open`/`close` follow the assignment), at-least-once with one shared
    producer and the consumer's commits."""

    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        metadata: AIOKafkaConsumer,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.metadata = metadata  # a started consumer that can ask for topic metadata
        self.metrics = metrics
        self.n_forecast_parts = settings.num_partitions
        self.n_dlq_parts = settings.num_partitions
        self.producers: dict[int, AIOKafkaProducer] = {}  # ticks partition -> its producer
        self.shared: AIOKafkaProducer | None = None  # at-least-once

    async def start(self) -> None:
        """Learn the forecasts and dead-letter topics' partition counts (a ticks partition
        p publishes to partition p modulo each); at-least-once, start the shared producer."""
        s = self.settings
        self.n_forecast_parts = len(await partitions_of(self.metadata, s.forecasts_topic)) or 1
        self.n_dlq_parts = len(await partitions_of(self.metadata, s.dlq_topic)) or 1
        if not s.exactly_once:
            self.shared = make_producer(s)
            await self.shared.start()

    async def open(self, partitions: list[int]) -> None:
        """Start the transactional producers of newly assigned ticks partitions, at once:
        each start initialises its transactional id, which fences the partition's previous
        owner and aborts its open transaction. Raises aiokafka's errors (those that did
        start are closed)."""
        if not self.settings.exactly_once:
            return
        new = {p: make_producer(self.settings, p) for p in partitions if p not in self.producers}
        got = await asyncio.gather(*(pr.start() for pr in new.values()), return_exceptions=True)
        errors = [e for e in got if isinstance(e, BaseException)]
        self.producers.update(new)
        if errors:
            await self.close(list(new))
            raise errors[0]

    async def close(self, partitions: list[int]) -> None:
        """Stop these partitions' producers (bounded: a producer cut off mid-call can hang)."""
        gone = [self.producers.pop(p) for p in partitions if p in self.producers]
        await asyncio.gather(*(_stop(pr) for pr in gone))

    async def stop(self) -> None:
        """Stop every producer."""
        await self.close(list(self.producers))
        if self.shared is not None:
            await _stop(self.shared)
            self.shared = None

    async def commit(
        self, out: BatchCommit, on_state: Callable[[int, bytes], None] | None = None
    ) -> None:
        """Publish forecasts, dead letters, checkpoints and offsets: atomically per ticks
        partition, one transaction each, all begun and committed concurrently
        (exactly-once); or send, wait, then commit (at-least-once).

        A partition without a producer (lost in a rebalance while this batch was computed)
        publishes nothing. Raises `Fenced` if some partitions' producers were fenced (their
        transactions aborted; the others committed), else aiokafka's errors.

        `on_state(offset, value)` is called, once committed, for each symbol state record
        (not markers or tombstones) with its offset in the state topic: the host state
        cache may then let go of it and fetch it back from there."""
        s = self.settings
        if not s.exactly_once:  # in order: a marker never moves past unacknowledged forecasts
            assert self.shared is not None
            placed: list[Placed] = []
            offsets = {TopicPartition(s.ticks_topic, p): o for p, o in out.offsets.items()}
            await asyncio.gather(*(await self._send_output(self.shared, out)))
            await asyncio.gather(*(await self._send_state(self.shared, out, placed)))
            if offsets:
                await self.consumer.commit(offsets)
            await _report_placed(placed, on_state)
            return
        subs = [(p, sub) for p, sub in out.split().items() if p in self.producers]
        placed_by: dict[int, list[Placed]] = {p: [] for p, _ in subs}
        got = await asyncio.gather(
            *(self._transaction(self.producers[p], sub, placed_by[p]) for p, sub in subs),
            return_exceptions=True,
        )
        fenced: list[int] = []
        for (p, _), e in zip(subs, got, strict=True):
            if isinstance(e, BaseException):
                if not _is_fenced(self.producers[p], e):
                    raise e
                fenced.append(p)
            else:  # committed: the topic holds these records
                await _report_placed(placed_by[p], on_state)
        if fenced:
            raise Fenced(sorted(fenced))

    async def _transaction(
        self, producer: AIOKafkaProducer, out: BatchCommit, placed: list[Placed]
    ) -> None:
        s = self.settings
        offsets = {TopicPartition(s.ticks_topic, p): o for p, o in out.offsets.items()}
        futs: list[asyncio.Future[Any]] = []
        try:
            async with producer.transaction():
                futs += await self._send_output(producer, out)
                futs += await self._send_state(producer, out, placed)
                if offsets:
                    await producer.send_offsets_to_transaction(offsets, s.group_id)
        except BaseException:
            for fut in futs:  # the transaction's error is raised once, not once per send
                fut.add_done_callback(_retrieve)
            raise

    async def _send_output(
        self, producer: AIOKafkaProducer, out: BatchCommit
    ) -> list[asyncio.Future[Any]]:
        s = self.settings
        futs: list[asyncio.Future[Any]] = []
        by_part: dict[int, list[Record]] = {}
        for sym, value, p in zip(out.symbols, out.values, out.parts, strict=True):
            by_part.setdefault(p % self.n_forecast_parts, []).append((sym.encode(), value))
        for p, recs in by_part.items():
            futs += await self._send_records(producer, s.forecasts_topic, p, recs)
        for key, value, p, headers in out.dead:
            futs.append(
                await producer.send(
                    s.dlq_topic, value=value, key=key, partition=p % self.n_dlq_parts,
                    headers=headers,
                )
            )  # fmt: skip
        return futs

    async def _send_state(
        self, producer: AIOKafkaProducer, out: BatchCommit, placed: list[Placed]
    ) -> list[asyncio.Future[Any]]:
        futs: list[asyncio.Future[Any]] = []
        n_state = 0
        for p, recs in out.state.items():
            futs += await self._send_records(producer, self.settings.state_topic, p, recs, placed)
            n_state += sum(k != MARKER_KEY for k, _ in recs)
        self.metrics.state_records.inc(n_state)
        return futs

    async def _send_records(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        partition: int,
        recs: list[Record],
        placed: list[Placed] | None = None,
    ) -> list[asyncio.Future[Any]]:
        """Send records to one partition as few record batches (cheaper than `send` each).
        `placed` gets each batch's future (its base offset) and records, in order."""
        futs: list[asyncio.Future[Any]] = []
        batch = producer.create_batch()
        start = 0
        for j, (key, value) in enumerate(recs):
            if batch.append(key=key, value=value, timestamp=None) is None:
                futs.append(await producer.send_batch(batch, topic, partition=partition))
                if placed is not None:
                    placed.append((futs[-1], recs[start:j]))
                start = j
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        if batch.record_count():
            futs.append(await producer.send_batch(batch, topic, partition=partition))
            if placed is not None:
                placed.append((futs[-1], recs[start:]))
        return futs


Placed = tuple[asyncio.Future[Any], list[Record]]  # a record batch's future and its records


async def _report_placed(
    placed: list[Placed], on_state: Callable[[int, bytes], None] | None
) -> None:
    """Tell `on_state` the offset of each committed symbol state record."""
    if on_state is None:
        return
    for fut, recs in placed:
        base = (await fut).offset
        for i, (key, value) in enumerate(recs):
            if key != MARKER_KEY and value is not None:
                on_state(base + i, value)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _stop(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(producer.stop(), 5.0)
