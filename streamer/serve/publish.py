"""The per-batch commit: forecasts, dead letters, state records and consumed offsets go to
Kafka together, in ONE transaction (exactly-once), or sent, acknowledged, then committed
in that order (at-least-once).

`BatchCommit` is what one micro-batch commits (built by the processor and the checkpoint
planner); `Publisher` sends it with the session's producer and consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from streamer.core.checkpoints import Record
from streamer.core.state_records import MARKER_KEY
from streamer.metrics import Metrics
from streamer.settings import Settings

__all__ = ["MAX_RECORD_BYTES", "BatchCommit", "Publisher", "make_producer"]

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


def make_producer(s: Settings) -> AIOKafkaProducer:
    """The session's producer: idempotent, and transactional when `exactly_once`."""
    return AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        transactional_id=f"tickcast-{s.group_id}-{s.client_id}" if s.exactly_once else None,
        transaction_timeout_ms=15000,
        # CONCURRENT_TRANSACTIONS on a partition already in the transaction backs off by
        # this (see `streamer.kafka.tuning`): 100 ms by default, far above a batch's budget.
        retry_backoff_ms=10,
        max_batch_size=MAX_RECORD_BYTES,
        max_request_size=4 * MAX_RECORD_BYTES,
        linger_ms=0,
    )


class Publisher:
    """Commits `BatchCommit`s with one session's producer and consumer."""

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.consumer = consumer
        self.metrics = metrics
        self.n_forecast_parts = settings.num_partitions
        self.n_dlq_parts = settings.num_partitions

    async def fetch_partitions(self) -> None:
        """Learn the forecasts and dead-letter topics' partition counts (a ticks partition
        p publishes to partition p modulo each)."""
        s = self.settings
        self.n_forecast_parts = len(await self.producer.partitions_for(s.forecasts_topic)) or 1
        self.n_dlq_parts = len(await self.producer.partitions_for(s.dlq_topic)) or 1

    async def commit(
        self, out: BatchCommit, on_state: Callable[[int, bytes], None] | None = None
    ) -> None:
        """Publish forecasts, dead letters, checkpoints and offsets: atomically in one Kafka
        transaction (exactly-once), or send, wait, then commit (at-least-once). Raises
        aiokafka's errors (the session fails and the next one restores).

        `on_state(offset, value)` is called, once committed, for each symbol state record
        (not markers or tombstones) with its offset in the state topic: the host state
        cache may then let go of it and fetch it back from there."""
        s = self.settings
        offsets = {TopicPartition(s.ticks_topic, p): o for p, o in out.offsets.items()}
        placed: list[tuple[asyncio.Future[Any], list[Record]]] = []
        if s.exactly_once:
            async with self.producer.transaction():
                await self._send_output(out)
                await self._send_state(out, placed)
                if offsets:
                    await self.producer.send_offsets_to_transaction(offsets, s.group_id)
        else:  # in order: a marker never moves past forecasts that are not acknowledged
            await asyncio.gather(*(await self._send_output(out)))
            await asyncio.gather(*(await self._send_state(out, placed)))
            if offsets:
                await self.consumer.commit(offsets)
        if on_state is not None:
            for fut, recs in placed:  # committed: the topic holds these records
                base = (await fut).offset
                for i, (key, value) in enumerate(recs):
                    if key != MARKER_KEY and value is not None:
                        on_state(base + i, value)

    async def _send_output(self, out: BatchCommit) -> list[asyncio.Future[Any]]:
        s = self.settings
        futs: list[asyncio.Future[Any]] = []
        by_part: dict[int, list[Record]] = {}
        for sym, value, p in zip(out.symbols, out.values, out.parts, strict=True):
            by_part.setdefault(p % self.n_forecast_parts, []).append((sym.encode(), value))
        for p, recs in by_part.items():
            futs += await self._send_records(s.forecasts_topic, p, recs)
        for key, value, p, headers in out.dead:
            futs.append(
                await self.producer.send(
                    s.dlq_topic, value=value, key=key, partition=p % self.n_dlq_parts,
                    headers=headers,
                )
            )  # fmt: skip
        return futs

    async def _send_state(
        self, out: BatchCommit, placed: list[tuple[asyncio.Future[Any], list[Record]]]
    ) -> list[asyncio.Future[Any]]:
        futs: list[asyncio.Future[Any]] = []
        n_state = 0
        for p, recs in out.state.items():
            futs += await self._send_records(self.settings.state_topic, p, recs, placed)
            n_state += sum(k != MARKER_KEY for k, _ in recs)
        self.metrics.state_records.inc(n_state)
        return futs

    async def _send_records(
        self,
        topic: str,
        partition: int,
        recs: list[Record],
        placed: list[tuple[asyncio.Future[Any], list[Record]]] | None = None,
    ) -> list[asyncio.Future[Any]]:
        """Send records to one partition as few record batches (cheaper than `send` each).
        `placed` gets each batch's future (its base offset) and records, in order."""
        producer = self.producer
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
