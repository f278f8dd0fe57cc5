"""Partition recovery: a ticks partition's symbols restored from the compacted state topic.

When partition p of the ticks topic is assigned (at start, after a restart, or when it moves
here from another instance), its symbols' state is read back from partition p of the state
topic. The partition's marker record says which tick offset that state covers; the consumer
seeks there and the processor re-applies the ticks between the marker and the group's
committed offset without publishing (their forecasts are already out), then carries on. So
a restarted or moved symbol continues exactly where an uninterrupted run would be.

The partition's symbol records go into the engine's host state cache (`core.statecache`),
the most recently ticked of them onto the free device slots. Beyond the cache's capacity
only where the topic holds each one is kept; `fetch_states` brings those back before a
batch that needs them.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streamer.core.checkpoints import PartitionProgress
from streamer.core.engine import Engine
from streamer.core.state_records import MARKER_KEY, decode_marker
from streamer.kafka.topics import read_to_end
from streamer.metrics import Metrics
from streamer.settings import Settings

__all__ = ["fetch_states", "restore_partition"]

log = logging.getLogger(__name__)


async def restore_partition(
    p: int,
    *,
    settings: Settings,
    engine: Engine,
    restorer: AIOKafkaConsumer,
    consumer: AIOKafkaConsumer,
    metrics: Metrics,
) -> PartitionProgress:
    """Load partition `p`'s symbols into `engine` from the state topic (read with
    `restorer`, a consumer of no group), seek `consumer` to the partition's marker, and
    return the partition's progress (where replay starts and publishing resumes).

    Raises TimeoutError if the state partition cannot be read to its end."""
    s = settings
    stp, ttp = TopicPartition(s.state_topic, p), TopicPartition(s.ticks_topic, p)
    restorer.assign([stp])
    await restorer.seek_to_beginning(stp)
    latest: dict[bytes, bytes | None] = {}
    where: dict[bytes, int] = {}  # key -> offset of its latest record

    def keep(_: TopicPartition, recs: list[Any]) -> None:
        for rec in recs:
            latest[rec.key] = rec.value
            where[rec.key] = rec.offset

    await read_to_end(restorer, [stp], keep)
    restorer.unsubscribe()  # no background fetching of the state topic
    marker = latest.pop(MARKER_KEY, None)
    committed = await consumer.committed(ttp)
    kept = [(v, where[k]) for k, v in latest.items() if v is not None]
    if marker is not None:
        start = decode_marker(marker)
        restored, rewarmed = engine.restore([v for v, _ in kept], [o for _, o in kept])
        metrics.state_restored.inc(restored + rewarmed)
        consumer.seek(ttp, start)
    else:
        start = committed if committed is not None else 0
        restored = rewarmed = 0
        if committed:
            log.warning("partition %d: committed offset %d but no state; starting cold", p, start)
        if committed is not None:
            consumer.seek(ttp, start)
    publish_from = max(start, committed or 0)
    log.info(
        "partition %d: %d symbols restored (%d onto the device, %d of them re-warmed), "
        "replay %d..%d, publish from %d",
        p, len(kept) if marker is not None else 0, restored + rewarmed, rewarmed, start,
        publish_from, publish_from,
    )  # fmt: skip
    return PartitionProgress(next_offset=start, publish_from=publish_from)


async def fetch_states(
    batch: dict[TopicPartition, list[Any]],
    *,
    settings: Settings,
    engine: Engine,
    restorer: AIOKafkaConsumer,
    metrics: Metrics,
) -> None:
    """Before `batch` is applied: let the host cache go of what the topic holds beyond its
    capacity, then bring back into it the states of the symbols this batch brings back
    that only the state topic holds, so that `Engine.apply` finds every state it needs.
    A record no longer at its offset (it cannot be: the topic is compacted and keeps each
    key's latest) is given up with a warning: that symbol starts afresh.

    Raises TimeoutError if a state partition cannot be read up to a wanted offset."""
    engine.cache.trim()
    if not engine.cache.outside:  # the usual case: nothing to look for
        return
    keys = {rec.key for recs in batch.values() for rec in recs if rec.key is not None}
    want = engine.wanted(k.decode("utf-8", "replace") for k in keys)
    if not want:
        return
    by_part: dict[int, dict[int, str]] = {}
    for sym, p, off in want:
        by_part.setdefault(p, {})[off] = sym
    for p, need in by_part.items():
        stp = TopicPartition(settings.state_topic, p)
        restorer.assign([stp])

        def found(_: TopicPartition, recs: list[Any], need: dict[int, str] = need) -> None:
            for rec in recs:
                if rec.offset in need and rec.value is not None:
                    del need[rec.offset]
                    engine.cache.fill(rec.value, rec.offset)

        for off in sorted(need):
            if off not in need:  # arrived with an earlier fetch
                continue
            restorer.seek(stp, off)
            await read_to_end(restorer, [stp], found, end={stp: off + 1})
            if off in need:
                lost = need.pop(off)
                log.warning("state of %r not at offset %d of %s; it starts afresh", lost, off, stp)
                engine.cache.forget(lost)
    restorer.unsubscribe()
    metrics.state_restored.inc(len(want))
