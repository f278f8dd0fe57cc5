"""Partition recovery: a ticks partition's symbols restored from the compacted state topic.

When partition p of the ticks topic is assigned (at start, after a restart, or when it moves
here from another instance), its symbols' state is read back from partition p of the state
topic. The partition's marker record says which tick offset that state covers; the consumer
seeks there and the processor re-applies the ticks between the marker and the group's
committed offset without publishing (their forecasts are already out), then carries on. So
a restarted or moved symbol continues exactly where an uninterrupted run would be.
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

__all__ = ["restore_partition"]

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

    def keep(_: TopicPartition, recs: list[Any]) -> None:
        for rec in recs:
            latest[rec.key] = rec.value

    await read_to_end(restorer, [stp], keep)
    restorer.unsubscribe()  # no background fetching of the state topic
    marker = latest.pop(MARKER_KEY, None)
    committed = await consumer.committed(ttp)
    values = [v for v in latest.values() if v is not None]
    if marker is not None:
        start = decode_marker(marker)
        restored, rewarmed = engine.restore(values)
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
        "partition %d: %d symbols restored (%d re-warmed), replay %d..%d, publish from %d",
        p, restored + rewarmed, rewarmed, start, publish_from, publish_from,
    )  # fmt: skip
    return PartitionProgress(next_offset=start, publish_from=publish_from)
