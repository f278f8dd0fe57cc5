"""Model announcements: the compacted topic `tickcast.models` says which version serves.

One record per change of champion, key `champion`, value JSON:

    {"format": 1, "version": "20261126T230000Z-1a2b3c4d", "previous": "...",
     "reason": "retrain" | "promote" | "rollback" | "seed", "time_ms": 1790000000000,
     "scores": {...}}

The topic is compacted, so its latest record is the current champion for as long as the
topic lives: a serving instance that starts (or restarts) reads it from the beginning and
converges on the champion, then follows new records as they come. The weights themselves
live in the model registry (`model.registry`), a directory every instance can read; the
record only names the version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from model import checkpoint
from model.checkpoint import CheckpointError

if TYPE_CHECKING:
    from streamer.serve.processor import StreamProcessor
    from streamer.settings import Settings

__all__ = [
    "ANNOUNCE_FORMAT",
    "KEY",
    "ModelFollower",
    "announce",
    "ensure_models_topic",
    "parse",
    "read_latest",
]

log = logging.getLogger(__name__)

ANNOUNCE_FORMAT = 1
KEY = b"champion"


def parse(value: bytes | None) -> dict[str, Any]:
    """An announcement's fields; raises ValueError (with the reason) for anything else."""
    if value is None:
        raise ValueError("empty record")
    try:
        rec = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != ANNOUNCE_FORMAT:
        raise ValueError(f"not a format-{ANNOUNCE_FORMAT} announcement")
    v = rec.get("version")
    if not isinstance(v, str) or not v or "/" in v or v.startswith("."):
        raise ValueError(f"bad version {v!r}")
    return rec


async def ensure_models_topic(bootstrap: str, topic: str, replication: int = 1) -> None:
    """Create the announcement topic (1 partition, compacted) if absent."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            configs = {"cleanup.policy": "compact", "segment.ms": "60000",
                       "min.cleanable.dirty.ratio": "0.1"}  # fmt: skip
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, 1, replication, topic_configs=configs)])
    finally:
        await admin.close()


async def announce(
    bootstrap: str, topic: str, record: dict[str, Any], replication: int = 1
) -> dict[str, Any]:
    """Publish `record` (at least a `version`) as the new champion; returns what was sent."""
    rec = {"format": ANNOUNCE_FORMAT, **record}
    value = orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY)
    parse(value)  # never publish something serving would refuse to read
    await ensure_models_topic(bootstrap, topic, replication)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=KEY, partition=0)
    finally:
        await producer.stop()
    log.info("announced %s on %s (%s)", rec["version"], topic, rec.get("reason"))
    return rec


async def read_latest(bootstrap: str, topic: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The latest valid announcement on `topic`, or None if there is none."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=50)  # fmt: skip
    await consumer.start()
    try:
        if not topic:
            return None
        # The consumer's partitions_for_topic is synchronous and reads only cached metadata
        # (None for a topic it never fetched): ask the cluster.
        parts = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
        if not parts:
            return None
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        latest: dict[str, Any] | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        while await behind():
            if loop.time() > deadline:
                raise TimeoutError(f"reading {topic}: no progress in {timeout_s} s")
            got = await consumer.getmany(*tps, timeout_ms=200)
            for recs in got.values():
                for r in recs:
                    with contextlib.suppress(ValueError):
                        latest = parse(r.value)
        return latest
    finally:
        await consumer.stop()


class ModelFollower:
    """Follows the announcement topic inside `tickcast serve` and hot-swaps the server to
    each newly announced champion.

    At start it reads the topic to its end and adopts the latest announcement (a restarted
    instance converges on the champion); then it applies each new one. A version that
    cannot serve (not in the registry, corrupt, another config) is refused: a log line,
    `tickcast_model_refused{reason}`, and the serving model stays. The same version
    announced again is tried again (the registry may have been repaired).
    """

    def __init__(self, settings: Settings, server: StreamProcessor) -> None:
        self.settings = settings
        self.server = server
        self.metrics = server.metrics
        self.refused: dict[str, str] = {}  # version -> reason of its last refusal
        self.applied = 0  # announcements acted on (swapped or refused)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: read announcements, swap; reconnects after Kafka failures."""
        backoff = 0.5
        while not stop.is_set():
            try:
                await self._session(stop)
                backoff = 0.5
            except Exception as e:  # Kafka down: keep serving the current model, retry
                log.warning("model announcements: %s: %s; retrying", type(e).__name__, e)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)

    async def _session(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_models_topic(s.kafka_bootstrap, s.models_topic, s.replication_factor)
        consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=200)  # fmt: skip
        await consumer.start()
        try:
            # Fetch the new topic's metadata first, or the consumer logs "not found" errors
            # until its next periodic refresh (aiokafka has no public call for this).
            await consumer._client.add_topic(s.models_topic)
            tp = TopicPartition(s.models_topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            latest: dict[str, Any] | None = None
            caught_up = False
            while not stop.is_set():
                got = await consumer.getmany(tp, timeout_ms=500)
                for r in got.get(tp, []):
                    try:
                        latest = parse(r.value)
                    except ValueError as e:
                        log.error("model announcement at offset %d ignored: %s", r.offset, e)
                        self.metrics.model_refused.labels("invalid").inc()
                if not caught_up:  # adopt only the newest of what was there at start
                    caught_up = await consumer.position(tp) >= end
                    if not caught_up:
                        continue
                if latest is not None:
                    rec, latest = latest, None
                    await self.apply(rec)
        finally:
            await consumer.stop()

    async def apply(self, rec: dict[str, Any]) -> bool:
        """Load, check and swap to `rec`'s version; False if refused or already serving."""
        version = rec["version"]
        if version == self.server.engine.version:
            return False
        self.applied += 1
        t0 = time.monotonic()
        path = Path(self.settings.registry) / "versions" / version
        try:
            loaded = await asyncio.to_thread(
                checkpoint.load, path, expect=self.server.engine.config
            )
            await self.server.swap(loaded)
        except CheckpointError as e:
            return self._refuse(version, e.kind, str(e))
        except Exception as e:  # anything else: keep serving, say why
            return self._refuse(version, "error", f"{type(e).__name__}: {e}")
        self.refused.pop(version, None)
        self.metrics.model_swap_seconds.observe(time.monotonic() - t0)
        self.metrics.set_announced_scores(rec.get("scores"))
        return True

    def _refuse(self, version: str, reason: str, detail: str) -> bool:
        self.refused[version] = reason
        self.metrics.model_refused.labels(reason).inc()
        log.error(
            "refused model %s (%s): %s; still serving %s",
            version, reason, detail, self.server.engine.version,
        )  # fmt: skip
        return False
