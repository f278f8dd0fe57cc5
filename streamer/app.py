"""`tickcast serve`: the async shell around the engine (Kafka in, Kafka and hub out).

One micro-batch at a time: `getmany` → decode → `Engine.apply` → publish forecasts,
dead letters, (periodically) state checkpoints, and the consumed offsets — in ONE Kafka
transaction by default (exactly-once), or publish-then-commit (at-least-once).

Restart and rebalance use one path. When a ticks partition is assigned, its symbols' state
is read back from the compacted state topic (same partition number). The partition's
marker record says which tick offset that state covers; the consumer seeks there and
re-applies the ticks between the marker and the group's committed offset without
publishing (their forecasts are already out), then carries on. So a restarted or moved
symbol continues exactly where an uninterrupted run would be. Any Kafka failure tears the
session down and starts a new one through the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.structs import TopicPartition

from model.checkpoint import Predictor
from streamer.engine import MARKER_KEY, Engine, decode_marker, encode_marker
from streamer.hub import Hub, payloads, points_of
from streamer.metrics import Metrics, close_http, serve_http
from streamer.settings import Settings
from streamer.ticks import decode

if TYPE_CHECKING:
    from streamer.server import FeedServer

log = logging.getLogger(__name__)

# A transaction begun right after the previous commit is refused (CONCURRENT_TRANSACTIONS)
# until the broker has written the commit markers, typically within a couple of ms; the
# client retries after a fixed 20 ms (KAFKA-5477; aiokafka copies Java's value). With one
# transaction per micro-batch that 20 ms lands on every batch's latency, so retry sooner.
# Measured on the 2-core dev VM, back-to-back transactions: 29 ms -> 9 ms each.
aiokafka_sender.BACKOFF_OVERRIDE = 0.002


class _QuietTransactionRetries(logging.Filter):
    """Kafka ≥ 3.6 answers a produce to a partition whose transaction is still being
    verified (the KIP-890 form of CONCURRENT_TRANSACTIONS) with NOT_ENOUGH_REPLICAS for
    clients of aiokafka's protocol version, so that they retry; aiokafka logs each retry as
    a warning. On a single healthy broker that is routine: log it at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "NotEnoughReplicasError" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("aiokafka.producer.sender").addFilter(_QuietTransactionRetries())

MAX_RECORD_BYTES = 1 << 20


async def ensure_topics(settings: Settings) -> None:
    """Create the four topics if absent (state: compacted, same partitions as ticks)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    replication = settings.replication
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        p = settings.partitions
        compact = {
            "cleanup.policy": "compact",
            "segment.ms": "60000",
            "min.cleanable.dirty.ratio": "0.1",
            "delete.retention.ms": "3600000",
        }
        wanted = [
            NewTopic(settings.ticks_topic, p, replication),
            NewTopic(settings.forecasts_topic, p, replication),
            NewTopic(settings.dlq_topic, p, replication),
            NewTopic(settings.state_topic, p, replication, topic_configs=compact),
        ]
        new = [t for t in wanted if t.name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()


@dataclass
class _Partition:
    """Where a ticks partition stands in this session."""

    next_offset: int  # first tick offset not applied yet
    publish_from: int  # ticks before this already have their forecasts published
    checkpointed: int = -1  # next_offset at the last marker written
    checkpoint_time: float = 0.0  # time.monotonic() of that marker
    round: list[str] | None = None  # symbols still to write in a checkpoint round
    round_start: int = -1  # next_offset when that round began: its marker
    reseeked: bool = False  # a seek back to next_offset is pending


@dataclass
class _Outgoing:
    """What one batch sends: forecasts, dead letters, state records, offsets to commit."""

    offsets: dict[int, int]  # ticks partition -> next offset
    symbols: list[str] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)  # forecast payloads
    parts: list[int] = field(default_factory=list)  # their forecasts partition
    stamps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    points: np.ndarray | None = None  # [n, 5] history points for the hub
    dead: list[tuple[bytes | None, bytes, int, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )
    state: dict[int, list[tuple[bytes, bytes | None]]] = field(default_factory=dict)
    compute_s: float = 0.0


@dataclass
class Stats:
    """Counters of this process (tests read them; Prometheus has the same)."""

    batches: int = 0
    ticks: int = 0
    forecasts: int = 0
    rejected: int = 0
    replayed: int = 0
    sessions: int = 0
    assigned: list[list[int]] = field(default_factory=list)


class Server:
    """The serving loop. `await Server(settings, predictor).run(stop_event)`."""

    def __init__(
        self,
        settings: Settings,
        predictor: Predictor,
        hub: Hub | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.engine = Engine(predictor, settings.max_symbols, settings.idle_evict_s)
        self.hub = hub or Hub(settings.feed_history)
        self.metrics = metrics or Metrics()
        self.metrics.set_model({"version": predictor.version, **predictor.config.to_dict()})
        self.stats = Stats()
        self.lock = asyncio.Lock()
        self.parts: dict[int, _Partition] = {}
        self._last_checkpoint = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._restorer: AIOKafkaConsumer | None = None
        self._n_forecast_parts = settings.partitions
        self._n_dlq_parts = settings.partitions
        self._stopping = False
        self._inflight: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None  # raised in a rebalance callback
        self.ready = False  # consuming: the session holds its first assignment
        self._latency_ms: list[float] = []  # tick -> forecast, sampled per batch (status())
        self._status_at = (time.monotonic(), 0, 0)  # (when, ticks, forecasts) at last status

    def status(self) -> dict[str, Any]:
        """Live figures for the feed's heartbeat (rates since the previous call)."""
        now = time.monotonic()
        t0, ticks0, fc0 = self._status_at
        dt = max(now - t0, 1e-9)
        lat = sorted(self._latency_ms)
        self._latency_ms.clear()
        self._status_at = (now, self.stats.ticks, self.stats.forecasts)
        rmse = self.metrics.live_rmse()
        return {
            "model": self.engine.version,
            "ticks_per_s": round((self.stats.ticks - ticks0) / dt, 1),
            "forecasts_per_s": round((self.stats.forecasts - fc0) / dt, 1),
            "latency_ms": {
                "p50": round(lat[len(lat) // 2], 2) if lat else None,
                "max": round(lat[-1], 2) if lat else None,
            },
            "rmse": rmse,
            "quality": self.metrics.quality.status(self.engine.version),
            "symbols": len(self.engine),
            "ready": self.ready,
        }

    # ------------------------------------------------------------------ model swap
    async def swap(self, predictor: Predictor) -> None:
        """Serve `predictor` from the next micro-batch on, without a gap or a lost tick.

        The new model's per-symbol state is built in a worker thread while this one keeps
        serving: every held symbol warmed from its buffer, then a second round for the
        ticks that arrived meanwhile. The last round (the few ticks since) runs between two
        micro-batches under the batch lock, then the engine switches; every forecast carries
        the version that made it. Raises ValueError for a model of another config."""
        t0 = time.perf_counter()
        async with self.lock:
            snap = self.engine.snapshot()
        pending = await asyncio.to_thread(self.engine.prepare_swap, predictor, snap)
        async with self.lock:
            snap = self.engine.snapshot()
        await asyncio.to_thread(pending.catch_up, snap)
        async with self.lock:
            p0 = time.perf_counter()
            old, caught = self.engine.finish_swap(pending)
            pause = time.perf_counter() - p0
        m = self.metrics
        m.swaps.inc()
        m.swap_pause.observe(pause)
        m.set_model({"version": predictor.version, **predictor.config.to_dict()})
        self.hub.announce({"type": "model", "version": predictor.version, "previous": old})
        log.info(
            "swapped model %s -> %s: %d symbols re-warmed in %.2f s, final round %.1f ms "
            "(%d symbols caught up)",
            old, predictor.version, len(snap.slots), time.perf_counter() - t0, pause * 1000,
            caught,
        )  # fmt: skip

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (or SIGTERM/SIGINT when run from the CLI)."""
        stop = stop or asyncio.Event()
        backoff = 0.5
        while not stop.is_set():
            try:
                await ensure_topics(self.settings)
                await self._session(stop)
                backoff = 0.5
            except Exception as e:  # the next session restores from Kafka
                log.warning(
                    "session failed (%s: %s); reconnecting", type(e).__name__, e,
                    exc_info=not isinstance(e, (KafkaError, OSError)),
                )  # fmt: skip
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)

    async def _session(self, stop: asyncio.Event) -> None:
        s = self.settings
        self.stats.sessions += 1
        self._failure = None
        self.engine.drop_partitions(range(1 << 16))
        self.parts.clear()
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            transactional_id=f"tickcast-{s.group}-{s.instance}" if s.exactly_once else None,
            transaction_timeout_ms=15000,
            # CONCURRENT_TRANSACTIONS on a partition already in the transaction backs off by
            # this (see BACKOFF_OVERRIDE above): 100 ms by default, far above a batch's budget.
            retry_backoff_ms=10,
            max_batch_size=MAX_RECORD_BYTES,
            max_request_size=4 * MAX_RECORD_BYTES,
            linger_ms=0,
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.group,
            client_id=s.instance,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=s.fetch_wait_ms,
            max_partition_fetch_bytes=8 * MAX_RECORD_BYTES,
            fetch_max_bytes=32 * MAX_RECORD_BYTES,
        )
        restorer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=5,  # the 500 ms default made each partition's restore ~1 s
            max_partition_fetch_bytes=8 * MAX_RECORD_BYTES,
            fetch_max_bytes=32 * MAX_RECORD_BYTES,
        )
        self._producer, self._consumer, self._restorer = producer, consumer, restorer
        started: list[Any] = []
        try:
            for client in (producer, restorer, consumer):
                if client is consumer:
                    consumer.subscribe([s.ticks_topic], listener=_Listener(self))
                await client.start()
                started.append(client)
            self._n_forecast_parts = len(await producer.partitions_for(s.forecasts_topic)) or 1
            self._n_dlq_parts = len(await producer.partitions_for(s.dlq_topic)) or 1
            log.info(
                "session %d: consuming %s as %s", self.stats.sessions, s.ticks_topic, s.instance
            )
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=s.max_batch)
                async with self.lock:
                    if self._failure is not None:
                        raise self._failure
                    if batch:
                        out = self._compute(batch)
                        if out is not None:
                            # One batch in flight: compute the next while this one commits.
                            await self._drain()
                            self._inflight = asyncio.create_task(self._send(out))
                    elif self._checkpoint_due():
                        await self._drain()
                        await self._send(self._outgoing())
            async with self.lock:  # graceful stop: everything applied is checkpointed
                await self._drain()
                self._stopping = True
                if self.parts:
                    await self._send(self._outgoing(force_checkpoint=True))
        finally:
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()
            with contextlib.suppress(BaseException):
                await self._drain()
            # Bounded: a client cut off mid-call can hang; and aiokafka's fetcher can re-raise
            # the CancelledError of its own internal task here (nothing cancels this task:
            # serve stops through the `stop` event).
            for client in reversed(started):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(client.stop(), 5.0)
            self._producer = self._consumer = self._restorer = None
            self._stopping = False
            self.ready = False

    # ------------------------------------------------------------------ rebalance
    # aiokafka calls these from its coordinator task and only logs what they raise, so a
    # failure is kept and re-raised by the batch loop, which ends the session: the next
    # session restores every partition from Kafka.
    async def assigned(self, partitions: set[TopicPartition]) -> None:
        async with self.lock:
            try:
                mine = sorted(
                    tp.partition for tp in partitions if tp.topic == self.settings.ticks_topic
                )
                self.stats.assigned.append(mine)
                for p in mine:
                    await self._restore(p)
                self.metrics.symbols.set(len(self.engine))
                self.ready = True
            except Exception as e:
                self._failure = self._failure or e

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        async with self.lock:
            mine = [tp.partition for tp in partitions if tp.partition in self.parts]
            if not mine:
                return
            try:
                if not self._stopping and self._producer is not None and self._failure is None:
                    await self._drain()
                    await self._send(self._outgoing(force_checkpoint=True, only=mine))
            except Exception as e:
                self._failure = self._failure or e
            finally:
                self.engine.drop_partitions(mine)
                for p in mine:
                    self.parts.pop(p, None)
                self.metrics.symbols.set(len(self.engine))

    async def _restore(self, p: int) -> None:
        """Load partition p's symbols from the state topic and seek to its marker."""
        assert self._restorer is not None and self._consumer is not None
        s = self.settings
        stp, ttp = TopicPartition(s.state_topic, p), TopicPartition(s.ticks_topic, p)
        self._restorer.assign([stp])
        await self._restorer.seek_to_beginning(stp)
        end = (await self._restorer.end_offsets([stp]))[stp]
        latest: dict[bytes, bytes | None] = {}
        idle_since = time.monotonic()
        while await self._restorer.position(stp) < end:
            got = await self._restorer.getmany(stp, timeout_ms=200)
            for rec in got.get(stp, []):
                latest[rec.key] = rec.value
                idle_since = time.monotonic()
            if not got and time.monotonic() - idle_since > 10.0:
                raise KafkaError(f"state partition {p}: no progress towards offset {end}")
        self._restorer.unsubscribe()  # no background fetching of the state topic
        marker = latest.pop(MARKER_KEY, None)
        committed = await self._consumer.committed(ttp)
        values = [v for v in latest.values() if v is not None]
        if marker is not None:
            start = decode_marker(marker)
            restored, rewarmed = self.engine.restore(values)
            self.metrics.restored.inc(restored + rewarmed)
            self._consumer.seek(ttp, start)
        else:
            start = committed if committed is not None else 0
            restored = rewarmed = 0
            if committed:
                log.warning(
                    "partition %d: committed offset %d but no state; starting cold", p, start
                )
            if committed is not None:
                self._consumer.seek(ttp, start)
        publish_from = max(start, committed or 0)
        self.parts[p] = _Partition(next_offset=start, publish_from=publish_from)
        log.info(
            "partition %d: %d symbols restored (%d re-warmed), replay %d..%d, publish from %d",
            p,
            restored + rewarmed,
            rewarmed,
            start,
            publish_from,
            publish_from,
        )

    # ------------------------------------------------------------------ the batch
    async def _drain(self) -> None:
        """Wait for the batch in flight (its failure fails the session)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    def _checkpoint_due(self) -> bool:
        """While idle: is some partition's state behind its position and due?"""
        now = time.monotonic()
        return any(st.round is not None for st in self.parts.values()) or any(
            st.checkpointed != st.next_offset
            and now - st.checkpoint_time >= self.settings.checkpoint_interval_s
            for st in self.parts.values()
        )

    def _compute(self, batch: dict[TopicPartition, list[Any]]) -> _Outgoing | None:
        """Everything synchronous about a batch: decode, step, encode, checkpoint records.
        Advances the engine and the partitions' positions."""
        t0 = time.perf_counter()
        s = self.settings
        values: list[bytes | None] = []
        keys: list[bytes | None] = []
        part: list[int] = []
        offs: list[int] = []
        stamps: list[int] = []
        advanced: dict[int, int] = {}
        for tp, recs in batch.items():
            st = self.parts.get(tp.partition)
            if st is None:  # revoked while this batch was in flight
                continue
            # The fetcher may hand out records from the committed offset, fetched before the
            # restore's seek to the checkpoint: re-seek once rather than skip ticks the
            # restored state has not seen (a second gap is a real one).
            gap = bool(recs) and recs[0].offset > st.next_offset
            if gap and st.next_offset < st.publish_from and not st.reseeked:
                assert self._consumer is not None
                self._consumer.seek(tp, st.next_offset)
                st.reseeked = True
                continue
            st.reseeked = False
            for rec in recs:
                if rec.offset < st.next_offset:  # applied already (a replay or re-fetch)
                    continue
                values.append(rec.value)
                keys.append(rec.key)
                part.append(tp.partition)
                offs.append(rec.offset)
                stamps.append(rec.timestamp)
            if recs:
                advanced[tp.partition] = max(st.next_offset, recs[-1].offset + 1)
        if not values:
            return None
        decoded, bad = decode(values, keys)
        partition = np.asarray(part, np.int32)
        offset = np.asarray(offs, np.int64)
        applied = self.engine.apply(decoded, partition, offset, skip_applied=True)
        f = applied.forecasts
        rejected = bad + applied.rejected
        if applied.evicted:
            self.metrics.evictions.inc(len(applied.evicted))
            self.hub.announce({"type": "evicted", "symbols": applied.evicted})
        # Re-applied ticks (after a restore) rebuild state only: their forecasts are out.
        limit = np.asarray([self.parts[p].publish_from for p in part], np.int64)
        fresh = offset >= limit
        rows = np.flatnonzero(fresh[f.index]) if len(f) else np.zeros(0, np.int64)
        stamp = np.asarray(stamps, np.int64)
        out = self._outgoing(advanced=advanced)
        out.symbols = [f.symbols[i] for i in rows.tolist()]
        out.values = payloads(f, rows, stamp, {"instance": s.instance})
        out.parts = (f.partition[rows] % self._n_forecast_parts).tolist()
        out.stamps = stamp[f.index[rows]] if len(rows) else stamp[:0]
        out.points = points_of(f, rows)
        for r in rejected:
            if fresh[r.index]:
                source = f"{s.ticks_topic}/{part[r.index]}/{offs[r.index]}"
                headers = [
                    ("reason", r.reason.encode()),
                    ("detail", r.detail.encode()),
                    ("source", source.encode()),
                ]
                value = values[r.index]
                out.dead.append(
                    (keys[r.index], value if value is not None else b"", part[r.index], headers)
                )
        for p, nxt in advanced.items():
            self.parts[p].next_offset = nxt
        # Metrics, once per batch.
        m = self.metrics
        m.ticks.inc(len(values))
        m.replayed.inc(int((~fresh).sum()))
        for reason, n in Counter(r.reason for r in rejected).items():
            m.rejected.labels(reason).inc(n)
        m.batch.observe(len(values))
        m.step.observe(applied.step_s)
        m.record_errors(f.sq_err_model, f.sq_err_persistence, f.n_err, f.version)
        m.quality.record(f.symbols, f.price, f.forecast, f.lower, f.upper, f.warming, f.version,
                         self.engine.window)  # fmt: skip
        m.symbols.set(len(self.engine))
        assert self._consumer is not None
        for p, nxt in advanced.items():
            hw = self._consumer.highwater(TopicPartition(s.ticks_topic, p))
            if hw is not None:
                m.lag.labels(str(p)).set(max(0, hw - nxt))
        self.stats.batches += 1
        self.stats.ticks += len(values)
        self.stats.rejected += len(out.dead)
        self.stats.replayed += int((~fresh).sum())
        out.compute_s = time.perf_counter() - t0
        return out

    def _outgoing(
        self,
        *,
        advanced: dict[int, int] | None = None,
        force_checkpoint: bool = False,
        only: list[int] | None = None,
    ) -> _Outgoing:
        """The commit of a batch: offsets to commit and, when due, state checkpoints
        (taken now, so they match exactly the ticks applied so far)."""
        advanced = advanced or {}
        scope = only if only is not None else list(self.parts)
        now = time.monotonic()
        chunk = max(1, self.settings.checkpoint_chunk)
        full: list[int] = []  # partitions checkpointed whole in this batch
        if force_checkpoint:
            full = scope
        else:
            # Never-checkpointed partitions at once; otherwise the one checkpointed longest
            # ago, if it is due: one partition at a time keeps each burst small.
            full = [p for p in scope if self.parts[p].checkpointed < 0]
            behind = [p for p in scope if self.parts[p].round is None
                      and (self.parts[p].checkpointed != self.parts[p].next_offset
                           or p in self.engine.tombstones)]  # fmt: skip
            oldest = min(behind, key=lambda p: self.parts[p].checkpoint_time, default=None)
            if (
                oldest is not None
                and now - self.parts[oldest].checkpoint_time >= self.settings.checkpoint_interval_s
                and oldest not in full
            ):
                dirty = self.engine.dirty_symbols(oldest)
                if len(dirty) <= chunk:
                    full.append(oldest)
                else:  # a round: `chunk` records a batch, the marker with the last chunk
                    st = self.parts[oldest]
                    st.round = dirty
                    st.round_start = advanced.get(oldest, st.next_offset)
        # While re-applying ticks after a restore the position is below the committed
        # offset; committing it would move the group back and republish those forecasts.
        out = _Outgoing(
            offsets={p: max(o, self.parts[p].publish_from) for p, o in advanced.items()}
        )
        records: dict[int, list[tuple[bytes, bytes | None]]] = {}
        if full:
            records = self.engine.checkpoint(full)
            for p in full:
                nxt = advanced.get(p, self.parts[p].next_offset)
                records[p].append((MARKER_KEY, encode_marker(nxt, self.engine.version)))
                self._marked(p, nxt, now)
        for p in scope:
            st = self.parts[p]
            if st.round is None or p in full:
                continue
            # Each record holds its symbol's state as of now, past the round's start; the
            # marker (the round's start) goes out once every symbol dirty then is written,
            # so a restore from it replays what each record lacks (`skip_applied` drops
            # the ticks a record already holds).
            part, st.round = st.round[:chunk], st.round[chunk:]
            got = self.engine.checkpoint_symbols(part).get(p, [])
            if not st.round:
                got += self.engine.tombstones_of(p)
                got.append((MARKER_KEY, encode_marker(st.round_start, self.engine.version)))
                self._marked(p, st.round_start, now)
            records.setdefault(p, []).extend(got)
        if records:
            out.state = records
            self._last_checkpoint = now
        return out

    def _marked(self, p: int, nxt: int, now: float) -> None:
        st = self.parts[p]
        st.checkpointed, st.checkpoint_time = nxt, now
        st.round, st.round_start = None, -1

    async def _send(self, out: _Outgoing) -> None:
        """Publish forecasts, dead letters, checkpoints and offsets: atomically in one Kafka
        transaction (exactly-once), or send, wait, then commit (at-least-once)."""
        s = self.settings
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        offsets = {TopicPartition(s.ticks_topic, p): o for p, o in out.offsets.items()}

        async def send_output() -> list[asyncio.Future[Any]]:
            futs: list[asyncio.Future[Any]] = []
            by_part: dict[int, list[tuple[bytes, bytes | None]]] = {}
            for sym, value, p in zip(out.symbols, out.values, out.parts, strict=True):
                by_part.setdefault(p, []).append((sym.encode(), value))
            for p, recs in by_part.items():
                futs += await self._send_records(s.forecasts_topic, p, recs)
            for key, value, p, headers in out.dead:
                futs.append(
                    await producer.send(
                        s.dlq_topic, value=value, key=key, partition=p % self._n_dlq_parts,
                        headers=headers,
                    )
                )  # fmt: skip
            return futs

        async def send_state() -> list[asyncio.Future[Any]]:
            futs: list[asyncio.Future[Any]] = []
            n_state = 0
            for p, recs in out.state.items():
                futs += await self._send_records(s.state_topic, p, recs)
                n_state += sum(k != MARKER_KEY for k, _ in recs)
            self.metrics.checkpoints.inc(n_state)
            return futs

        if s.exactly_once:
            async with producer.transaction():
                await send_output()
                await send_state()
                if offsets:
                    await producer.send_offsets_to_transaction(offsets, s.group)
        else:  # in order: a marker never moves past forecasts that are not acknowledged
            await asyncio.gather(*(await send_output()))
            await asyncio.gather(*(await send_state()))
            if offsets:
                await consumer.commit(offsets)
        if out.values:
            self.hub.publish(out.symbols, out.values, out.points)
            self.metrics.forecasts.inc(len(out.values))
            self.stats.forecasts += len(out.values)
            now_ms = time.time() * 1000
            for q in (out.stamps.min(), np.median(out.stamps), out.stamps.max()):
                ms = max(0.0, now_ms - float(q))
                self.metrics.latency.observe(ms / 1000)
                self._latency_ms.append(ms)
            del self._latency_ms[:-3000]
            self.metrics.batch_seconds.observe(out.compute_s)

    async def _send_records(
        self, topic: str, partition: int, recs: list[tuple[bytes, bytes | None]]
    ) -> list[asyncio.Future[Any]]:
        """Send records to one partition as few record batches (cheaper than `send` each)."""
        producer = self._producer
        assert producer is not None
        futs: list[asyncio.Future[Any]] = []
        batch = producer.create_batch()
        for key, value in recs:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futs.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        if batch.record_count():
            futs.append(await producer.send_batch(batch, topic, partition=partition))
        return futs


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, server: Server) -> None:
        self.server = server

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.server.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.server.assigned(assigned)


def serve(settings: Settings, predictor: Predictor) -> int:
    """Run the server (and its websocket feed) until SIGTERM/SIGINT; returns the exit code."""
    return run_loop(settings, serving(settings, predictor))


async def serving(
    settings: Settings,
    predictor: Predictor,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[FeedServer | None], None] | None = None,
) -> None:
    """The server, its feed and metrics endpoint, until `stop` is set or SIGTERM/SIGINT."""
    from streamer.server import FeedServer

    stop = stop or asyncio.Event()
    on_signals(stop)
    metrics = Metrics()
    http = (
        serve_http(metrics, settings.metrics_host, settings.metrics_port)
        if settings.metrics_port
        else None
    )
    server = Server(settings, predictor, metrics=metrics)
    feed: FeedServer | None = None
    follower: asyncio.Task[None] | None = None
    try:
        if settings.precompile:
            t0 = time.perf_counter()
            n = server.engine.precompile()
            log.info("precompiled %d batch shapes in %.1f s", n, time.perf_counter() - t0)
        if settings.feed_port:
            feed = FeedServer(
                settings,
                server.hub,
                ready=lambda: server.ready,
                status=server.status,
                metrics=metrics,
            )
            await feed.start()
        if settings.models_topic:
            from streamer.models import ModelFollower

            follower = asyncio.create_task(ModelFollower(settings, server).run(stop))
        # Everything allocated so far (modules, compiled kernels, buffers) lives as long as
        # the process: keep it out of the collector's full passes, which otherwise scan it
        # all and stall the loop for milliseconds at a time under load.
        gc.collect()
        gc.freeze()
        if on_ready is not None:
            on_ready(feed)
        profile = os.environ.get("TICKCAST_PROFILE")  # cProfile the serving, not the start
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        try:
            await server.run(stop)
        finally:
            if profiler is not None and profile:
                profiler.disable()
                profiler.dump_stats(profile)
        log.info(
            "stopped: %d ticks, %d forecasts, %d rejected",
            server.stats.ticks,
            server.stats.forecasts,
            server.stats.rejected,
        )
    finally:
        if follower is not None:
            stop.set()
            try:
                await asyncio.wait_for(follower, 10.0)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("model follower did not stop in 10 s")
        if feed is not None:
            await feed.close()
        if http is not None:
            close_http(http)


def on_signals(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set `stop` (a graceful stop); a second one cancels the running task,
    so its `finally` blocks still run (a broker it started is stopped) without waiting."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def handler() -> None:
        if stop.is_set() and task is not None:
            log.warning("second signal: stopping now")
            task.cancel()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler)


def run_loop(settings: Settings, main: Coroutine[Any, Any, None]) -> int:
    """Run `main` on uvloop when asked for and installed (lower fan-out latency), with the
    JAX compile cache on; returns 0, or 130 when a second signal cut it short."""
    from model.runtime import enable_compile_cache

    enable_compile_cache()
    factory = None
    if settings.uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            log.info("uvloop is not installed; using asyncio's event loop")
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            runner.run(main)
        except asyncio.CancelledError:  # a second Ctrl-C: stopped without the graceful part
            return 130
    return 0
