"""The model follower: inside `tickcast serve`, follows the announcement topic
(`streamer.kafka.announcements`) and hot-swaps the processor to each new champion.

It depends on a small `Swappable` protocol, not on the processor class, so it can be tested
against anything that swaps, and the processor never imports it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from model import checkpoint
from model.checkpoint import LoadedModel
from model.config import ModelConfig
from model.errors import CheckpointError
from streamer.kafka.announcements import parse
from streamer.kafka.reconnect import reconnecting
from streamer.kafka.topics import ensure_models_topic, fetch_metadata
from streamer.metrics import Metrics
from streamer.settings import Settings

__all__ = ["ModelFollower", "Swappable"]

log = logging.getLogger(__name__)


class Swappable(Protocol):
    """Something serving a model that can swap to another (`StreamProcessor` is one)."""

    @property
    def version(self) -> str: ...

    @property
    def config(self) -> ModelConfig: ...

    async def swap(self, loaded: LoadedModel) -> None: ...


class ModelFollower:
    """Follows the announcement topic inside `tickcast serve` and hot-swaps the server to
    each newly announced champion.

    At start it reads the topic to its end and adopts the latest announcement (a restarted
    instance converges on the champion); then it applies each new one. A version that
    cannot serve (not in the registry, corrupt, another config) is refused: a log line,
    `tickcast_model_refused{reason}`, and the serving model stays. The same version
    announced again is tried again (the registry may have been repaired).
    """

    def __init__(self, settings: Settings, server: Swappable, metrics: Metrics) -> None:
        self.settings = settings
        self.server = server
        self.metrics = metrics
        self.refused: dict[str, str] = {}  # version -> reason of its last refusal
        self.applied = 0  # announcements acted on (swapped or refused)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: read announcements, swap; reconnects after Kafka failures (the
        current model keeps serving meanwhile)."""
        await reconnecting(
            lambda: self._session(stop), stop, what="model announcements", log=log,
            max_wait_s=10.0,
        )  # fmt: skip

    async def _session(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_models_topic(s.kafka_bootstrap, s.models_topic, s.replication_factor)
        consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=200)  # fmt: skip
        await consumer.start()
        try:
            await fetch_metadata(consumer, s.models_topic)
            tp = TopicPartition(s.models_topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            latest: dict[str, Any] | None = None
            caught_up = False
            while not stop.is_set():
                got = await consumer.getmany(tp, timeout_ms=500)
                for r in got.get(tp, []):
                    try:
                        latest = parse(r.value)
                    except ValueError as e:
                        log.error("model announcement at offset %d ignored: %s", r.offset, e)
                        self.metrics.model_refused.labels("invalid").inc()
                if not caught_up:  # adopt only the newest of what was there at start
                    caught_up = await consumer.position(tp) >= end
                    if not caught_up:
                        continue
                if latest is not None:
                    rec, latest = latest, None
                    await self.apply(rec)
        finally:
            await consumer.stop()

    async def apply(self, rec: dict[str, Any]) -> bool:
        """Load, check and swap to `rec`'s version; False if refused or already serving."""
        version = rec["version"]
        if version == self.server.version:
            return False
        self.applied += 1
        t0 = time.monotonic()
        path = Path(self.settings.registry) / "versions" / version
        try:
            loaded = await asyncio.to_thread(checkpoint.load, path, expect=self.server.config)
            await self.server.swap(loaded)
        except CheckpointError as e:
            return self._refuse(version, e.kind, str(e))
        except Exception as e:  # anything else: keep serving, say why
            return self._refuse(version, "error", f"{type(e).__name__}: {e}")
        self.refused.pop(version, None)
        self.metrics.model_swap_seconds.observe(time.monotonic() - t0)
        self.metrics.set_announced_scores(rec.get("scores"))
        return True

    def _refuse(self, version: str, reason: str, detail: str) -> bool:
        self.refused[version] = reason
        self.metrics.model_refused.labels(reason).inc()
        log.error(
            "refused model %s (%s): %s; still serving %s",
            version, reason, detail, self.server.version,
        )  # fmt: skip
        return False
