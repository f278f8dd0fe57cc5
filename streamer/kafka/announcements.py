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
from aiokafka.structs import TopicPartition

from streamer.kafka.topics import ensure_models_topic, partitions_of, read_to_end

__all__ = [
    "ANNOUNCE_FORMAT",
    "KEY",
    "announce",
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
    """The latest valid announcement on `topic`, or None if there is none. Raises
    TimeoutError if the topic cannot be read to its end within `timeout_s`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=50)  # fmt: skip
    await consumer.start()
    try:
        parts = await partitions_of(consumer, topic) if topic else []
        if not parts:
            return None
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        latest: dict[str, Any] | None = None

        def keep(_: TopicPartition, recs: list[Any]) -> None:
            nonlocal latest
            for r in recs:
                with contextlib.suppress(ValueError):
                    latest = parse(r.value)

        try:
            await asyncio.wait_for(read_to_end(consumer, tps, keep), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"reading {topic}: no progress in {timeout_s} s") from None
        return latest
    finally:
        await consumer.stop()
