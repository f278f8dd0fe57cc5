"""The model follower's decisions (streamer/serve/follower.py) against a fake `Swappable`,
without Kafka: which announcements swap, which are refused and why."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from model.checkpoint import LoadedModel
from model.config import ModelConfig
from model.paths import resolve_model
from model.registry import Registry
from streamer.metrics import Metrics
from streamer.serve.follower import ModelFollower
from streamer.settings import Settings


class FakeServer:
    """Serves `version` with `config`; records each swap."""

    def __init__(self, version: str, config: ModelConfig) -> None:
        self._version, self._config = version, config
        self.swapped: list[str] = []

    @property
    def version(self) -> str:
        return self._version

    @property
    def config(self) -> ModelConfig:
        return self._config

    async def swap(self, loaded: LoadedModel) -> None:
        self.swapped.append(loaded.version)
        self._version = loaded.version


def refused(m: Metrics, reason: str) -> float:
    value = m.registry.get_sample_value("tickcast_model_refused_total", {"reason": reason})
    assert value is not None
    return value


def test_swaps_to_a_registered_version_and_refuses_the_rest(
    tmp_path: Path, stocks: LoadedModel
) -> None:
    reg = Registry(tmp_path)
    v = reg.import_dir(resolve_model("stocks"))
    server = FakeServer("old-version", stocks.config)
    metrics = Metrics()
    f = ModelFollower(Settings(registry=str(tmp_path)), server, metrics)

    assert asyncio.run(f.apply({"version": v})) is True
    assert server.swapped == [v]
    assert asyncio.run(f.apply({"version": v})) is False  # serving it already: nothing to do
    assert server.swapped == [v]

    assert asyncio.run(f.apply({"version": "20990101T000000Z-00000000"})) is False
    assert refused(metrics, "missing") == 1.0
    other = FakeServer("old-version", dataclasses.replace(stocks.config, units=7))
    g = ModelFollower(Settings(registry=str(tmp_path)), other, metrics)
    assert asyncio.run(g.apply({"version": v})) is False  # another config cannot swap in
    assert refused(metrics, "mismatch") == 1.0
    assert other.swapped == [] and g.refused == {v: "mismatch"}
