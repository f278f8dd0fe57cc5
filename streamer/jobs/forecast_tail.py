"""The forecasts topic tailed into a drift detector, for `tickcast retrain --on-drift`.

`ForecastTail` is a thread that reads the forecasts topic (read_committed, from its end when
the job starts, or its beginning) and feeds every forecast to
`streamer.core.drift.DriftDetector`; detections go to its `drifts` queue, which the retrain
loop (`streamer.jobs.retrain_loop`) reads. The detector starts over when asked (`reset`:
an attempt starts or ends) and when a new model version serves.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streamer.core.drift import Drift, DriftConfig, DriftDetector
from streamer.kafka.reconnect import reconnecting
from streamer.kafka.topics import partitions_of
from streamer.settings import Settings

__all__ = ["ForecastTail"]

log = logging.getLogger(__name__)


class ForecastTail(threading.Thread):
    """Tails `settings.forecasts_topic` into a `DriftDetector`; detections go to `drifts`.

    Args:
      settings: bootstrap and topic.
      window: the champion's window (the detector scores from a symbol's window-th tick).
      config: the detector's thresholds.
      from_beginning: read the topic from its start (default: from its end at start).
    """

    def __init__(
        self, settings: Settings, window: int, config: DriftConfig, from_beginning: bool = False
    ) -> None:
        super().__init__(name="forecast-tail", daemon=True)
        self.settings = settings
        self.from_beginning = from_beginning
        self.detector = DriftDetector(window, config)
        self.drifts: queue.Queue[Drift] = queue.Queue()
        self.records = 0  # forecasts read
        self.ready = threading.Event()  # positioned at the topic's end
        self._reset = threading.Event()
        self._halt = threading.Event()

    def reset(self) -> None:
        """Start the detector over before the next records (thread-safe)."""
        self._reset.set()

    def halt(self) -> None:
        self._halt.set()

    def run(self) -> None:
        """Tail until `halt`; after a Kafka failure, again (the detector keeps its state)."""
        asyncio.run(self._run())

    async def _run(self) -> None:
        stop = asyncio.Event()

        async def session() -> None:
            await self._session()
            if self._halt.is_set():
                stop.set()

        await reconnecting(session, stop, what="forecast tail", log=log, max_wait_s=10.0)

    async def _session(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=200,
        )
        await consumer.start()
        try:
            parts: list[int] = []
            while not parts and not self._halt.is_set():
                parts = await partitions_of(consumer, s.forecasts_topic)
                if not parts:
                    await asyncio.sleep(0.5)
            if not parts:
                return
            tps = [TopicPartition(s.forecasts_topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            if self.from_beginning and not self.ready.is_set():
                await consumer.seek_to_beginning(*tps)
            elif not self.ready.is_set():
                await consumer.seek_to_end(*tps)  # only what is served from now on
                for tp in tps:
                    await consumer.position(tp)
            self.ready.set()
            while not self._halt.is_set():
                got = await consumer.getmany(*tps, timeout_ms=200, max_records=5000)
                if self._reset.is_set():
                    self._reset.clear()
                    self.detector.reset()
                values = [r.value for recs in got.values() for r in recs]
                if not values:
                    continue
                self.records += len(values)
                drift = self.detector.update_records(values)
                if drift is not None:
                    self.drifts.put(drift)
        finally:
            await consumer.stop()
