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
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

__all__ = ["ANNOUNCE_FORMAT", "KEY", "announce", "ensure_models_topic", "parse", "read_latest"]

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
        parts = await consumer.partitions_for_topic(topic) if topic else None
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
