"""The per-partition commit: a batch split by ticks partition (no broker), and fencing on the
real broker: a second publisher opening a partition aborts the first's open transaction and
the first can never commit to it again."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import ProducerFenced

from streamer.kafka.local import LocalBroker
from streamer.kafka.topics import ensure_topics
from streamer.metrics import Metrics
from streamer.serve.publish import BatchCommit, Fenced, Publisher, transactional_id
from tests.streamer.harness import fresh_settings, read_topic


def test_split_gives_each_partition_its_own_records() -> None:
    out = BatchCommit(
        offsets={0: 10, 2: 7},
        symbols=["A", "B", "C"],
        values=[b"a", b"b", b"c"],
        parts=[0, 1, 0],
        stamps=np.asarray([1, 2, 3], np.int64),
        dead=[(b"X", b"bad", 2, [])],
        state={1: [(b"B", b"s")], 0: [(b"A", b"s")]},
    )
    subs = out.split()
    assert sorted(subs) == [0, 1, 2]
    assert subs[0].offsets == {0: 10} and subs[0].symbols == ["A", "C"]
    assert subs[0].values == [b"a", b"c"] and subs[0].parts == [0, 0]
    assert subs[0].state == {0: [(b"A", b"s")]} and subs[0].dead == []
    assert (
        subs[1].offsets == {} and subs[1].symbols == ["B"] and subs[1].state == {1: [(b"B", b"s")]}
    )
    assert subs[2].offsets == {2: 7} and subs[2].dead == [(b"X", b"bad", 2, [])]
    assert subs[2].symbols == []


def test_transactional_id_names_group_topic_and_partition() -> None:
    s = fresh_settings("127.0.0.1:1", group_id="g", ticks_topic="ticks")
    assert transactional_id(s, 3) == "tickcast-g-ticks-3"


@pytest.mark.kafka
def test_new_owner_fences_the_old_one_and_aborts_its_transaction(kafka: LocalBroker) -> None:
    s = fresh_settings(kafka.bootstrap, num_partitions=2)

    async def go() -> tuple[list[int], list[bytes]]:
        await ensure_topics(s)
        clients = [AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap) for _ in range(2)]
        for c in clients:
            await c.start()
        old, new = (Publisher(s, c, c, Metrics()) for c in clients)
        try:
            await old.start()
            await new.start()
            await old.open([0, 1])
            await old.commit(BatchCommit(offsets={}, symbols=["A"], values=[b"1"], parts=[0]))
            # The old owner's transaction is open (records sent, no commit yet) when the
            # new owner opens partition 0.
            producer = old.producers[0]
            await producer.begin_transaction()
            await (await producer.send(s.forecasts_topic, b"zombie", key=b"A", partition=0))
            await new.open([0])
            with pytest.raises(ProducerFenced):  # its transaction was aborted
                await producer.commit_transaction()
            with pytest.raises(Fenced) as fenced:  # and later ones fail as fenced too
                await old.commit(
                    BatchCommit(offsets={}, symbols=["A", "B"], values=[b"2", b"3"], parts=[0, 1])
                )
            await new.commit(BatchCommit(offsets={}, symbols=["A"], values=[b"4"], parts=[0]))
        finally:
            await old.stop()
            await new.stop()
            for c in clients:
                await c.stop()
        recs = await read_topic(s.kafka_bootstrap, s.forecasts_topic, idle_s=2.0)
        return fenced.value.partitions, sorted(r.value for r in recs)

    partitions, values = asyncio.run(go())
    assert partitions == [0]
    # partition 1's transaction committed beside the fenced one; nothing of the zombie's did.
    assert values == [b"1", b"3", b"4"]
