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
from streamer.serve.processor import ensure_topics, on_signals, serving
from streamer.settings import Settings

log = logging.getLogger(__name__)


async def embedded(
    settings: Settings,
    loaded: LoadedModel,
    *,
    data: str = "stocks",
    rate: float = 20.0,
    passes: int | None = None,
    stop: asyncio.Event | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Broker, replay of `data` at `rate` ticks/s (`passes` times; None: forever), server
    and feed, until `stop` is set or SIGTERM/SIGINT."""
    stop = stop or asyncio.Event()
    on_signals(stop)  # from the start: Ctrl-C while the broker starts still cleans up
    series = load(data)
    workdir = Path(tempfile.mkdtemp(prefix="tickcast-run-"))
    broker = LocalBroker(workdir / "kafka", port=free_port())
    feeder: asyncio.Task[replay.ReplayResult] | None = None
    try:
        say(f"starting a local Kafka broker in {workdir} ...")
        await asyncio.to_thread(ensure_jars)
        await asyncio.to_thread(broker.start)
        if stop.is_set():
            return
        settings = replace(settings, kafka_bootstrap=broker.bootstrap, replication_factor=1)
        await ensure_topics(settings)
        symbols = ", ".join(s.symbol for s in series)
        feeder = asyncio.create_task(
            replay.publish(
                settings.kafka_bootstrap,
                settings.ticks_topic,
                replay.looped(series, passes),
                rate=rate,
                progress=False,
            )
        )

        def ready(feed: FeedServer | None) -> None:
            say(f"replaying {data} ({symbols}) at {rate:g} ticks/s into {broker.bootstrap}")
            if feed is not None:
                say(f"dashboard: http://{settings.feed_host}:{feed.port}/   feed: {feed.url}")
            if settings.metrics_port:
                say(f"metrics:   http://{settings.metrics_host}:{settings.metrics_port}/metrics")
            say("Ctrl-C stops everything")

        await serving(settings, loaded, stop, on_ready=ready)
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
        await asyncio.to_thread(broker.stop)
        shutil.rmtree(workdir, ignore_errors=True)
        say("stopped: server, replay and broker")
