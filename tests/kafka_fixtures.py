"""Kafka fixtures (a pytest plugin: ``pytest_plugins = ["tests.kafka_fixtures"]``).

Real brokers, the pinned Apache Kafka from deploy/kafka, on free ports of 127.0.0.1:

- ``kafka``: one single-node broker (a :class:`~streamer.kafka.local.LocalBroker`) for the
  whole session; tests connect to ``kafka.bootstrap`` and use their own topic names.
- ``kafka_cluster``: three nodes (a :class:`~streamer.kafka.cluster.LocalCluster`, replication
  factor 3, min.insync.replicas 2), started only if some test asks for it. A test that stops
  or kills a node starts it again before it ends.

No Java, no Maven or no jars is a failure, never a skip: these tests are the stream engine's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamer.kafka.cluster import LocalCluster
from streamer.kafka.jars import LocalKafkaError
from streamer.kafka.local import LocalBroker, free_port


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), port=free_port())
    try:
        broker.start()
    except LocalKafkaError as e:
        pytest.fail(f"could not start the test Kafka broker: {e}", pytrace=False)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("kafka-cluster"), n=3)
    try:
        cluster.start()
    except LocalKafkaError as e:
        pytest.fail(f"could not start the test Kafka cluster: {e}", pytrace=False)
    yield cluster
    cluster.stop()
