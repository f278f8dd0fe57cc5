"""Topic administration and reading a topic to its end (aiokafka outside the hot loop).

Every call aiokafka offers no public API for is wrapped here, once, with a test
(`tests/streamer/kafka/test_topics.py`): `partitions_of` (cluster metadata, not the
consumer's cache) and `fetch_metadata` (so a consumer knows a new topic before its next
periodic refresh).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from streamer.settings import Settings

__all__ = [
    "COMPACTED",
    "create_topics",
    "ensure_models_topic",
    "ensure_topics",
    "fetch_metadata",
    "partitions_of",
    "read_to_end",
]

# Compaction settings of the state and models topics: small segments, cleaned early, so a
# restore reads little more than the latest record per key.
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": "60000",
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": "3600000",
}


async def create_topics(bootstrap: str, topics: list[NewTopic]) -> None:
    """Create those of `topics` that do not exist yet (a concurrent creator is fine).

    Raises aiokafka's `KafkaError` if the cluster cannot be reached or refuses."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [t for t in topics if t.name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()


async def ensure_topics(settings: Settings) -> None:
    """Create the ticks, forecasts, dead-letter and state topics if absent (state:
    compacted, with as many partitions as ticks: state partition p holds ticks partition p's
    symbols). Raises `KafkaError` as `create_topics`."""
    p, rf = settings.num_partitions, settings.replication_factor
    await create_topics(
        settings.kafka_bootstrap,
        [
            NewTopic(settings.ticks_topic, p, rf),
            NewTopic(settings.forecasts_topic, p, rf),
            NewTopic(settings.dlq_topic, p, rf),
            NewTopic(settings.state_topic, p, rf, topic_configs=COMPACTED),
        ],
    )


async def ensure_models_topic(bootstrap: str, topic: str, replication: int = 1) -> None:
    """Create the model announcement topic (1 partition, compacted) if absent."""
    await create_topics(bootstrap, [NewTopic(topic, 1, replication, topic_configs=COMPACTED)])


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The partitions of `topic` from the cluster's metadata (empty if there is no such
    topic). aiokafka's `partitions_for_topic` is synchronous and reads only the consumer's
    cache, which knows no topic it has not fetched yet: this asks the cluster (a private
    call, kept here alone)."""
    metadata = await consumer._client.fetch_all_metadata()
    return sorted(metadata.partitions_for_topic(topic) or ())


async def fetch_metadata(consumer: AIOKafkaConsumer, topic: str) -> None:
    """Make `consumer` fetch `topic`'s metadata now (a private call, kept here alone);
    otherwise it logs "not found" errors for a new topic until its next periodic refresh."""
    await consumer._client.add_topic(topic)


async def read_to_end(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    on_batch: Callable[[TopicPartition, list[Any]], None],
    *,
    end: dict[TopicPartition, int] | None = None,
    stall_s: float = 10.0,
    max_records: int | None = None,
) -> None:
    """Read `tps` (assigned to `consumer`) from their current positions to `end` (default:
    the end offsets they have when this is called), calling `on_batch(tp, records)` with
    each fetched batch of one partition, in offset order (records past the end left out).

    Raises TimeoutError if no record arrives for `stall_s` seconds while some partition is
    still behind (a broker that does not answer)."""
    if end is None:
        end = await consumer.end_offsets(tps)
    loop = asyncio.get_running_loop()
    idle_since = loop.time()

    async def behind() -> list[TopicPartition]:
        return [tp for tp in tps if await consumer.position(tp) < end[tp]]

    while todo := await behind():
        got = await consumer.getmany(*todo, timeout_ms=200, max_records=max_records)
        for tp, recs in got.items():
            on_batch(tp, [r for r in recs if r.offset < end[tp]])
        if got:
            idle_since = loop.time()
        elif loop.time() - idle_since > stall_s:
            raise TimeoutError(f"reading {todo[0].topic}: no progress in {stall_s:g} s")
