"""The local Kafka (streamer.kafka.local, .cluster, .jars) against aiokafka: real brokers,
real JVMs; and `tickcast kafka up|down|status`."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from streamer.cli import stream_commands
from streamer.kafka.cluster import LocalCluster, down, status, up
from streamer.kafka.local import LocalBroker, free_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.kafka]  # every test here runs a broker


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _create(bootstrap: str, topic: str, partitions: int = 2, rf: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, rf)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, values: list[bytes], **kw: object) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **kw)
    await producer.start()
    try:
        for i, v in enumerate(values):
            await producer.send_and_wait(topic, v, key=str(i % 3).encode())
    finally:
        await producer.stop()


async def _consume(
    bootstrap: str, topic: str, until: int | bytes, timeout: float = 20, **kw: object
) -> list[bytes]:
    """Values of topic from the start, until `until` records (int) or that value (bytes)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **kw
    )
    await consumer.start()
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                got += [r.value for r in records if r.value is not None]
            if len(got) >= until if isinstance(until, int) else until in got:
                break
        if kw.get("group_id"):
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


def test_produce_consume_round_trip(kafka: LocalBroker) -> None:
    topic = _topic("roundtrip")
    values = [f"tick-{i}".encode() for i in range(30)]

    async def go() -> list[bytes]:
        await _create(kafka.bootstrap, topic, partitions=3)
        await _produce(kafka.bootstrap, topic, values)
        return await _consume(kafka.bootstrap, topic, len(values), group_id=f"g-{topic}")

    got = asyncio.run(go())
    assert sorted(got) == sorted(values)
    assert kafka.running and kafka.bootstrap == f"127.0.0.1:{kafka.port}"


def test_transactions_read_committed(kafka: LocalBroker) -> None:
    """Consume-transform-produce: offsets committed with the output; aborted output invisible."""
    src, out, group = _topic("tx-in"), _topic("tx-out"), _topic("tx-group")
    tp = TopicPartition(src, 0)

    async def go() -> tuple[list[bytes], list[bytes], int | None]:
        await _create(kafka.bootstrap, src, partitions=1)
        await _create(kafka.bootstrap, out, partitions=1)
        await _produce(kafka.bootstrap, src, [b"a", b"b", b"c"])
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap, transactional_id=f"txid-{out}"
        )
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send(out, b"committed-1")
                await producer.send_offsets_to_transaction({tp: OffsetAndMetadata(2, "")}, group)
            with pytest.raises(RuntimeError):
                async with producer.transaction():
                    await producer.send(out, b"aborted")
                    await producer.send_offsets_to_transaction(
                        {tp: OffsetAndMetadata(3, "")}, group
                    )
                    raise RuntimeError("abort this one")
            async with producer.transaction():
                await producer.send(out, b"committed-2")
        finally:
            await producer.stop()
        committed = await _consume(
            kafka.bootstrap, out, b"committed-2", isolation_level="read_committed"
        )
        everything = await _consume(kafka.bootstrap, out, b"committed-2")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            offset = await consumer.committed(tp)
        finally:
            await consumer.stop()
        return committed, everything, offset

    committed, everything, offset = asyncio.run(go())
    assert committed == [b"committed-1", b"committed-2"]
    assert everything == [b"committed-1", b"aborted", b"committed-2"]  # read_uncommitted
    assert offset == 2  # the aborted transaction's offset commit was dropped too


def test_restart_keeps_data_after_stop_and_kill(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "kafka", port=free_port())
    topic = _topic("durable")
    try:
        broker.start()
        first_pid = broker.pid
        asyncio.run(_create(broker.bootstrap, topic))
        asyncio.run(_produce(broker.bootstrap, topic, [b"one", b"two"]))
        broker.stop()
        assert not broker.running
        broker.start()  # no second format: same cluster, same topic
        assert broker.pid != first_pid
        asyncio.run(_produce(broker.bootstrap, topic, [b"three"]))
        assert sorted(asyncio.run(_consume(broker.bootstrap, topic, 3))) == [
            b"one", b"three", b"two",
        ]  # fmt: skip
        broker.kill()
        assert not broker.running
        broker.start()
        assert len(asyncio.run(_consume(broker.bootstrap, topic, 3))) == 3
    finally:
        broker.stop()
    assert not (tmp_path / "kafka" / "kafka.pid").exists()


def test_cluster_survives_one_node_down(kafka_cluster: LocalCluster) -> None:
    bootstrap = kafka_cluster.bootstrap
    topic = _topic("replicated")

    async def replicas() -> list[int]:
        """Replica count per partition, once every node knows the new topic."""
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            for _ in range(50):
                (desc,) = await admin.describe_topics([topic])
                if desc["partitions"]:
                    break
                await asyncio.sleep(0.2)
        finally:
            await admin.close()
        return sorted(len(p["replicas"]) for p in desc["partitions"])

    asyncio.run(_create(bootstrap, topic, partitions=2, rf=3))
    assert asyncio.run(replicas()) == [3, 3]
    asyncio.run(_produce(bootstrap, topic, [b"before-1", b"before-2"]))
    kafka_cluster.stop_node(0)
    try:
        assert not kafka_cluster.nodes[0].running
        asyncio.run(_produce(bootstrap, topic, [b"after-1", b"after-2"]))  # acks=all, 2 of 3
        got = asyncio.run(_consume(bootstrap, topic, 4, group_id=f"g-{topic}"))
        assert sorted(got) == [b"after-1", b"after-2", b"before-1", b"before-2"]
    finally:
        kafka_cluster.start_node(0)
    assert all(node.running for node in kafka_cluster.nodes)


def test_up_status_down(tmp_path: Path) -> None:
    data = tmp_path / "state"
    port = free_port()
    assert status(data)["running"] is False
    try:
        broker = up(port, data)
        info = status(data)
        assert info["running"] and info["ready"]
        assert info["pid"] == broker.pid and info["bootstrap"] == f"127.0.0.1:{port}"
        again = up(port + 1, data)  # already running: the same broker, its port
        assert again.pid == broker.pid and again.bootstrap == broker.bootstrap
        asyncio.run(_create(broker.bootstrap, "up-topic", partitions=1))

        parser = argparse.ArgumentParser()
        stream_commands.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["kafka", "status", "--data-dir", str(data)])
        assert args.func(args) == 0
    finally:
        stopped = down(data)
    assert stopped
    assert status(data)["running"] is False
    assert down(data) is False
    args = parser.parse_args(["kafka", "status", "--data-dir", str(data), "--json"])
    assert args.func(args) == 3
