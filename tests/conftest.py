"""Shared fixtures. Everything here is real: real CSV files, real models, real checkpoints.

Markers (registered in pyproject.toml) say what a test needs beyond Python, so
`make test-fast` can leave those out: `kafka` (a broker), `browser` (Chromium),
`prometheus` (Prometheus or promtool), `slow` (minutes of training), `heavy` (tens of CPU
seconds of training or evaluation). `kafka` is added here
to every test whose fixtures include a broker and to every test under tests/streamer/e2e/;
a test that starts a broker some other way carries the mark itself, and one that forgets it
fails (see `_no_broker_unless_marked`).
"""

from __future__ import annotations

import os
from pathlib import Path

# Tests run on the CPU even where a GPU is present, so results compare across machines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

from model.config import ModelConfig, TrainConfig
from model.runtime import configure_jax

configure_jax()  # what every entry point applies (CLI, services, benchmarks)

pytest_plugins = ["tests.kafka_fixtures"]

BROKER_FIXTURES = {"kafka", "kafka_cluster"}  # tests/kafka_fixtures.py
BROKER_DIRS = (Path(__file__).parent / "streamer" / "e2e",)  # feature tests: all on a broker


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        closure = set(getattr(item, "fixturenames", ()))  # every fixture, transitively
        if closure & BROKER_FIXTURES or any(d in item.path.parents for d in BROKER_DIRS):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(autouse=True)
def _no_broker_unless_marked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test without the `kafka` marker that starts a broker in this process fails at once,
    so `-m 'not kafka'` stays broker-free (the session's broker fixtures are lazy: they start
    only for a test that asks for them)."""
    if request.node.get_closest_marker("kafka") is not None:
        return
    from streamer.kafka.cluster import LocalCluster
    from streamer.kafka.local import LocalBroker

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a Kafka broker: mark it kafka")

    for cls in (LocalBroker, LocalCluster):
        monkeypatch.setattr(cls, "start", refuse)


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(
        layers=2, units=8, dropout=0.1, window=12, features=("ret", "dlogvol", "tod", "dow")
    )


@pytest.fixture
def tiny_train() -> TrainConfig:
    return TrainConfig(
        max_steps=60, eval_every=20, batch_size=8, chunks=3, progress=False, max_seconds=None
    )
