"""Topic administration and the wrappers of aiokafka's private calls
(streamer/kafka/topics.py), on the real broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import TopicPartition

from streamer.kafka.local import LocalBroker
from streamer.kafka.topics import (
    ensure_models_topic,
    ensure_topics,
    fetch_metadata,
    partitions_of,
    read_to_end,
)
from tests.streamer.harness import fresh_settings

pytestmark = pytest.mark.kafka


def test_ensure_topics_creates_four_topics_once_state_compacted(kafka: LocalBroker) -> None:
    s = fresh_settings(kafka.bootstrap, num_partitions=3)

    async def go() -> dict[str, int]:
        await ensure_topics(s)
        await ensure_topics(s)  # again: nothing to do, no error
        await ensure_models_topic(kafka.bootstrap, s.models_topic)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            names = [s.ticks_topic, s.forecasts_topic, s.dlq_topic, s.state_topic,
                     s.models_topic]  # fmt: skip
            deadline = asyncio.get_running_loop().time() + 30
            while True:  # a topic just created may describe with no partitions yet
                described = await admin.describe_topics(names)
                if all(d["partitions"] for d in described):
                    break
                assert asyncio.get_running_loop().time() < deadline, described
                await asyncio.sleep(0.2)
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, s.state_topic)]
            )
            assert "cleanup.policy" in str(configs) and "compact" in str(configs)
            return {d["topic"]: len(d["partitions"]) for d in described}
        finally:
            await admin.close()

    counts = asyncio.run(go())
    assert counts == {s.ticks_topic: 3, s.forecasts_topic: 3, s.dlq_topic: 3, s.state_topic: 3,
                      s.models_topic: 1}  # fmt: skip


def test_partitions_of_asks_the_cluster_and_read_to_end_reads_all(kafka: LocalBroker) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"

    async def go() -> tuple[list[int], list[int], list[bytes]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            before = await partitions_of(consumer, topic)  # no such topic: empty, no error
            s = fresh_settings(kafka.bootstrap, ticks_topic=topic, num_partitions=2)
            await ensure_topics(s)
            producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
            await producer.start()
            try:
                for i in range(50):
                    await producer.send(topic, f"v{i}".encode(), partition=i % 2)
                await producer.flush()
            finally:
                await producer.stop()
            parts = await partitions_of(consumer, topic)  # not in the consumer's cache
            await fetch_metadata(consumer, topic)
            assert consumer.partitions_for_topic(topic) == {0, 1}  # now it is
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            got: list[bytes] = []
            await read_to_end(consumer, tps, lambda tp, recs: got.extend(r.value for r in recs))
            return before, parts, got
        finally:
            await consumer.stop()

    before, parts, got = asyncio.run(go())
    assert before == [] and parts == [0, 1]
    assert sorted(got) == sorted(f"v{i}".encode() for i in range(50))


def test_read_to_end_raises_when_the_broker_does_not_answer(kafka: LocalBroker) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        await ensure_topics(fresh_settings(kafka.bootstrap, ticks_topic=topic, num_partitions=1))
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        await producer.send_and_wait(topic, b"x", partition=0)
        await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            consumer.pause(tp)  # a partition that never delivers: no progress
            await read_to_end(consumer, [tp], lambda tp, recs: None, stall_s=0.5)
        finally:
            await consumer.stop()

    with pytest.raises(TimeoutError, match="no progress"):
        asyncio.run(go())
