"""`tickcast run`: the whole product on one machine, on its embedded default.

A local Kafka broker (the pinned Apache Kafka jars, fetched with Maven, in a temporary
directory), a replay of a bundled real series of several symbols (looped, so the dashboard
never goes quiet), `tickcast serve` with the bundled model, and the websocket feed with its
dashboard. Ctrl-C (or SIGTERM) stops the server (final checkpoint included), the replay and
the broker, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from model.checkpoint import LoadedModel
from model.data import load
from streamer.feed.server import FeedServer
from streamer.jobs import replay
from streamer.kafka.jars import ensure_jars
from streamer.kafka.local import LocalBroker, free_port
from streamer.kafka.topics import ensure_topics
from streamer.serve.service import ServeService
from streamer.settings import Settings

__all__ = ["LocalRun"]

log = logging.getLogger(__name__)


class LocalRun:
    """Broker, replay of `data` at `rate` ticks/s (`passes` times; None: forever), server and
    feed: a `streamer.lifecycle.Service`."""

    def __init__(
        self,
        settings: Settings,
        loaded: LoadedModel,
        *,
        data: str = "stocks",
        rate: float = 20.0,
        passes: int | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.settings, self.loaded = settings, loaded
        self.data, self.rate, self.passes, self.say = data, rate, passes, say
        self.workdir = Path(tempfile.mkdtemp(prefix="tickcast-run-"))
        self.broker = LocalBroker(self.workdir / "kafka", port=free_port())
        self.feeder: asyncio.Task[replay.ReplayResult] | None = None
        self.service: ServeService | None = None

    async def start(self) -> None:
        """Start the broker, create the topics, start the replay and the serve service."""
        say = self.say
        series = load(self.data)
        say(f"starting a local Kafka broker in {self.workdir} ...")
        await asyncio.to_thread(ensure_jars)
        await asyncio.to_thread(self.broker.start)
        s = replace(self.settings, kafka_bootstrap=self.broker.bootstrap, replication_factor=1)
        self.settings = s
        await ensure_topics(s)
        self.feeder = asyncio.create_task(
            replay.publish(
                s.kafka_bootstrap, s.ticks_topic, replay.looped(series, self.passes),
                rate=self.rate, progress=False,
            )
        )  # fmt: skip
        symbols = ", ".join(x.symbol for x in series)

        def ready(feed: FeedServer | None) -> None:
            say(f"replaying {self.data} ({symbols}) at {self.rate:g} ticks/s into "
                f"{self.broker.bootstrap}")  # fmt: skip
            if feed is not None:
                say(f"dashboard: http://{s.feed_host}:{feed.port}/   feed: {feed.url}")
            if s.metrics_port:
                say(f"metrics:   http://{s.metrics_host}:{s.metrics_port}/metrics")
            say("Ctrl-C stops everything")

        self.service = ServeService(s, self.loaded, on_ready=ready)
        await self.service.start()

    async def main_loop(self, stop: asyncio.Event) -> None:
        """Serve until `stop`."""
        assert self.service is not None
        await self.service.main_loop(stop)

    async def shutdown(self) -> None:
        """Stop the service, the replay and the broker, in that order."""
        if self.service is not None:
            await self.service.shutdown()
        if self.feeder is not None:
            self.feeder.cancel()
            with contextlib.suppress(BaseException):
                await self.feeder
        await asyncio.to_thread(self.broker.stop)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.say("stopped: server, replay and broker")
