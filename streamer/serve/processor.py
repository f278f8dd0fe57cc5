"""The Kafka stream processor of `tickcast serve`: the async shell around the engine (Kafka
in, Kafka and hub out).

One micro-batch at a time: `getmany` → decode → `Engine.apply` → publish forecasts,
dead letters, (periodically) state checkpoints, and the consumed offsets — in one Kafka
transaction per ticks partition by default (exactly-once; each assigned partition has its
own transactional producer, so whoever is assigned it next fences this instance), or
publish-then-commit (at-least-once).

Restart and rebalance use one path. When a ticks partition is assigned, its symbols' state
is read back from the compacted state topic (same partition number). The partition's
marker record says which tick offset that state covers; the consumer seeks there and
re-applies the ticks between the marker and the group's committed offset without
publishing (their forecasts are already out), then carries on. So a restarted or moved
symbol continues exactly where an uninterrupted run would be. Any Kafka failure tears the
session down and starts a new one through the same path. Recovery is
`streamer.serve.recovery`, checkpoint planning `streamer.core.checkpoints`; the process
around it (feed, metrics endpoint, model follower, signals) is `streamer.serve.service`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from model.checkpoint import LoadedModel
from model.config import ModelConfig
from streamer.core.checkpoints import Checkpointer, PartitionProgress
from streamer.core.engine import Engine
from streamer.core.forecasts import payloads, points_of
from streamer.core.statecache import StateCache
from streamer.core.ticks import decode, make_format
from streamer.feed.hub import Hub
from streamer.kafka.reconnect import reconnecting
from streamer.kafka.topics import ensure_topics
from streamer.metrics import Metrics
from streamer.serve.ownership import Counters, Listener, PartitionOwnership
from streamer.serve.publish import MAX_RECORD_BYTES, BatchCommit, Fenced, Publisher
from streamer.serve.recovery import fetch_states
from streamer.settings import Settings

log = logging.getLogger(__name__)


class StreamProcessor(PartitionOwnership):
    """The serving loop. `await StreamProcessor(settings, loaded).run(stop_event)`."""

    def __init__(
        self,
        settings: Settings,
        loaded: LoadedModel,
        hub: Hub | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.format = make_format(settings.format, settings.ts_unit)  # ValueError: refused
        self.engine = Engine(
            loaded, settings.max_symbols, settings.idle_evict_s,
            cache=StateCache(settings.state_cache_symbols),
            state_max_age_s=settings.state_max_age_s,
        )  # fmt: skip
        self.hub = hub or Hub(settings.feed_snapshot_points, settings.feed_hub_symbols)
        self.metrics = metrics or Metrics()
        self.metrics.set_model({"version": loaded.version, **loaded.config.to_dict()})
        self.counters = Counters()
        self.lock = asyncio.Lock()
        self.parts: dict[int, PartitionProgress] = {}
        self.checkpointer = Checkpointer(
            self.parts, settings.checkpoint_interval_s, settings.checkpoint_max_records
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._restorer: AIOKafkaConsumer | None = None
        self._publisher: Publisher | None = None
        self._stopping = False
        self._inflight: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None  # raised in a rebalance callback
        self._assigned_at: dict[int, float] = {}  # partition -> assigned (until first publish)
        self._why = "session start"  # why the next assignment happens (its log line)
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
        self._status_at = (now, self.counters.ticks, self.counters.forecasts)
        rmse = self.metrics.rolling_rmse()
        return {
            "model": self.engine.version,
            "ticks_per_s": round((self.counters.ticks - ticks0) / dt, 1),
            "forecasts_per_s": round((self.counters.forecasts - fc0) / dt, 1),
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
    async def swap(self, loaded: LoadedModel) -> None:
        """Serve `loaded` from the next micro-batch on, without a gap or a lost tick.

        The new model's per-symbol state is built in a worker thread while this one keeps
        serving: every held symbol warmed from its buffer, then a second round for the
        ticks that arrived meanwhile. The last round (the few ticks since) runs between two
        micro-batches under the batch lock, then the engine switches; every forecast carries
        the version that made it. Raises ValueError for a model of another config."""
        t0 = time.perf_counter()
        async with self.lock:
            snap = self.engine.snapshot()
        pending = await asyncio.to_thread(self.engine.prepare_swap, loaded, snap)
        async with self.lock:
            snap = self.engine.snapshot()
        await asyncio.to_thread(pending.catch_up, snap)
        async with self.lock:
            p0 = time.perf_counter()
            old, caught = self.engine.finish_swap(pending)
            pause = time.perf_counter() - p0
        m = self.metrics
        m.model_swaps.inc()
        m.model_swap_pause_seconds.observe(pause)
        m.set_model({"version": loaded.version, **loaded.config.to_dict()})
        self.hub.announce({"type": "model", "version": loaded.version, "previous": old})
        log.info(
            "swapped model %s -> %s: %d symbols re-warmed in %.2f s, final round %.1f ms "
            "(%d symbols caught up)",
            old, loaded.version, len(snap.slots), time.perf_counter() - t0, pause * 1000,
            caught,
        )  # fmt: skip

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set; after a Kafka failure a new session restores from
        Kafka and carries on."""
        stop = stop or asyncio.Event()

        async def session() -> None:
            await ensure_topics(self.settings)
            await self._session(stop)

        await reconnecting(session, stop, what="session", log=log)

    # ------------------------------------------------------------------ what serves
    @property
    def version(self) -> str:
        """The model version serving now."""
        return self.engine.version

    @property
    def config(self) -> ModelConfig:
        """The serving model's config (a swap must keep it)."""
        return self.engine.config

    async def _session(self, stop: asyncio.Event) -> None:
        s = self.settings
        self.counters.sessions += 1
        self._failure = None
        self._why = "session start"
        self.engine.drop_partitions(range(1 << 16))
        self.parts.clear()
        self._assigned_at.clear()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.group_id,
            client_id=s.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_partition_fetch_bytes=8 * MAX_RECORD_BYTES,
            fetch_max_bytes=32 * MAX_RECORD_BYTES,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            # How long a rebalance waits for members to rejoin; each first finishes its batch
            # and checkpoints what it gives up. aiokafka's default is the session timeout,
            # which a batch compiling a new shape on a busy host can exceed (the member is
            # then dropped and the group rebalances again); Java's is max.poll.interval.ms.
            rebalance_timeout_ms=s.max_poll_interval_ms,
        )
        restorer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=5,  # the 500 ms default made each partition's restore ~1 s
            max_partition_fetch_bytes=8 * MAX_RECORD_BYTES,
            fetch_max_bytes=32 * MAX_RECORD_BYTES,
        )
        publisher = Publisher(s, consumer, restorer, self.metrics)
        self._consumer, self._restorer, self._publisher = consumer, restorer, publisher
        started: list[AIOKafkaConsumer] = []
        try:
            await restorer.start()
            started.append(restorer)
            await publisher.start()
            # Joining the group comes last: the model is compiled (`ServeService.start`)
            # and the clients are up, so nothing long runs on the loop between joining and
            # the first heartbeats (aiokafka heartbeats from a task on this loop).
            consumer.subscribe([s.ticks_topic], listener=Listener(self))
            await consumer.start()
            started.append(consumer)
            log.info(
                "session %d: consuming %s as %s", self.counters.sessions, s.ticks_topic, s.client_id
            )
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=s.max_poll_records)
                async with self.lock:
                    if self._failure is not None:
                        raise self._failure
                    if batch:  # first the states only the state topic holds (eviction)
                        await fetch_states(batch, settings=s, engine=self.engine,
                                           restorer=restorer, metrics=self.metrics)  # fmt: skip
                        out = self._compute(batch)
                        if out is not None:
                            # One batch in flight: compute the next while this one commits.
                            await self._drain()
                            self._inflight = asyncio.create_task(self._send(out))
                    elif self.checkpointer.due(time.monotonic()):
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
            # serve stops through the `stop` event). The consumer first: it leaves the group.
            for client in reversed(started):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(client.stop(), 5.0)
                if client is consumer:
                    await publisher.stop()
            if consumer not in started:
                await publisher.stop()
            self._consumer = self._restorer = None
            self._publisher = None
            self._stopping = False
            self.ready = False

    # ------------------------------------------------------------------ the batch
    async def _drain(self) -> None:
        """Wait for the batch in flight (its failure fails the session)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    def _compute(self, batch: dict[TopicPartition, list[Any]]) -> BatchCommit | None:
        """Everything synchronous about a batch: decode, step, encode, checkpoint records.
        Advances the engine and the partitions' positions. (It runs on the loop thread: a
        first-time compile here delays heartbeats; see docs/stream.md, *Fencing and
        fail-over*.)"""
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
        decoded, bad = decode(values, keys, self.format)
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
        out.values = payloads(f, rows, stamp, {"instance": s.client_id})
        out.parts = f.partition[rows].tolist()  # the publisher maps them to forecasts partitions
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
        m.ticks_consumed.inc(len(values))
        m.ticks_replayed.inc(int((~fresh).sum()))
        for reason, n in Counter(r.reason for r in rejected).items():
            m.ticks_rejected.labels(reason).inc(n)
        for reason, n in Counter(r.reason for r in decoded.skipped).items():
            m.ticks_skipped.labels(reason).inc(n)
        self.counters.skipped += len(decoded.skipped)
        m.batch_ticks.observe(len(values))
        m.step_seconds.observe(applied.step_s)
        m.record_errors(f.sq_err_model, f.sq_err_persistence, f.n_err, f.version)
        m.quality.record(f.symbols, f.price, f.forecast, f.lower, f.upper, f.warming, f.version,
                         self.engine.window)  # fmt: skip
        m.active_symbols.set(len(self.engine))
        assert self._consumer is not None
        for p, nxt in advanced.items():
            hw = self._consumer.highwater(TopicPartition(s.ticks_topic, p))
            if hw is not None:
                m.consumer_lag.labels(str(p)).set(max(0, hw - nxt))
        self.counters.batches += 1
        self.counters.ticks += len(values)
        self.counters.rejected += len(out.dead)
        self.counters.replayed += int((~fresh).sum())
        out.compute_s = time.perf_counter() - t0
        return out

    def _outgoing(
        self,
        *,
        advanced: dict[int, int] | None = None,
        force_checkpoint: bool = False,
        only: list[int] | None = None,
    ) -> BatchCommit:
        """The commit of a batch: offsets and, when due, state checkpoints (planned by
        `core.checkpoints`, taken now so they match exactly the ticks applied so far)."""
        offsets, records = self.checkpointer.plan(
            self.engine, time.monotonic(), advanced=advanced, force=force_checkpoint, only=only
        )
        return BatchCommit(offsets=offsets, state=records)

    async def _send(self, out: BatchCommit) -> None:
        """Commit one batch (`Publisher.commit`), then hand its forecasts to the hub: the
        feed never shows a forecast Kafka does not have."""
        assert self._publisher is not None
        try:
            await self._publisher.commit(out, on_state=self.engine.cache.committed)
        except Fenced as e:
            self._lose(e.partitions)
            raise
        if self._assigned_at:  # the first publish of newly assigned partitions
            now = time.monotonic()
            for p in set(out.parts) & self._assigned_at.keys():
                self.metrics.assignment_to_publish_seconds.observe(now - self._assigned_at.pop(p))
        if out.values:
            self.hub.publish(out.symbols, out.values, out.points)
            self.metrics.forecasts_published.inc(len(out.values))
            self.counters.forecasts += len(out.values)
            now_ms = time.time() * 1000
            for q in (out.stamps.min(), np.median(out.stamps), out.stamps.max()):
                ms = max(0.0, now_ms - float(q))
                self.metrics.tick_to_forecast_seconds.observe(ms / 1000)
                self._latency_ms.append(ms)
            del self._latency_ms[:-3000]
            self.metrics.batch_seconds.observe(out.compute_s)
