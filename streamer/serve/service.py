"""`tickcast serve` as a service: the stream processor, its websocket feed, the Prometheus
endpoint and the model follower, composed once (`ServeService`), started, run and shut down
by `streamer.lifecycle`.

`tickcast run` embeds the same service (`streamer.jobs.run_local`), and so do tests and
benchmarks that need the real stack in-process.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from model.checkpoint import LoadedModel
from streamer.feed.server import FeedServer
from streamer.kafka import tuning
from streamer.lifecycle import run_service
from streamer.metrics import Metrics, close_http, serve_http
from streamer.serve.follower import ModelFollower
from streamer.serve.processor import StreamProcessor
from streamer.settings import Settings

__all__ = ["ServeService", "serve"]

log = logging.getLogger(__name__)


class ServeService:
    """The processor, feed, metrics endpoint and model follower of one instance.

    Args:
      settings: everything configurable.
      loaded: the model to serve until an announced champion replaces it.
      on_ready: called with the feed (None without one) once everything listens.
    """

    def __init__(
        self,
        settings: Settings,
        loaded: LoadedModel,
        on_ready: Callable[[FeedServer | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.processor = StreamProcessor(settings, loaded, metrics=self.metrics)
        self.feed: FeedServer | None = None
        self.on_ready = on_ready
        self._http: Any = None
        self._follower: asyncio.Task[None] | None = None
        self._follower_stop = asyncio.Event()

    async def start(self) -> None:
        """Configure the Kafka clients, open the metrics endpoint, precompile the common
        batch shapes, open the feed and start following model announcements."""
        s = self.settings
        tuning.configure()
        if s.metrics_port:
            self._http = serve_http(self.metrics, s.metrics_host, s.metrics_port)
        if s.precompile:
            t0 = time.perf_counter()
            n = self.processor.engine.precompile()
            log.info("precompiled %d batch shapes in %.1f s", n, time.perf_counter() - t0)
        if s.feed_port:
            processor = self.processor
            self.feed = FeedServer(
                s, processor.hub, ready=lambda: processor.ready, status=processor.status,
                metrics=self.metrics,
            )  # fmt: skip
            await self.feed.start()
        if s.models_topic:
            follower = ModelFollower(s, self.processor, self.metrics)
            self._follower = asyncio.create_task(follower.run(self._follower_stop))
        # Everything allocated so far (modules, compiled kernels, buffers) lives as long as
        # the process: keep it out of the collector's full passes, which otherwise scan it
        # all and stall the loop for milliseconds at a time under load.
        gc.collect()
        gc.freeze()
        if self.on_ready is not None:
            self.on_ready(self.feed)

    async def main_loop(self, stop: asyncio.Event) -> None:
        """Serve until `stop` (a graceful stop checkpoints everything applied)."""
        profile = os.environ.get("TICKCAST_PROFILE")  # cProfile the serving, not the start
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        try:
            await self.processor.run(stop)
        finally:
            if profiler is not None and profile:
                profiler.disable()
                profiler.dump_stats(profile)
        c = self.processor.counters
        log.info("stopped: %d ticks, %d forecasts, %d rejected", c.ticks, c.forecasts, c.rejected)

    async def shutdown(self) -> None:
        """Stop the follower (10 s at most), close the feed and the metrics endpoint."""
        if self._follower is not None:
            self._follower_stop.set()
            try:
                await asyncio.wait_for(self._follower, 10.0)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("model follower did not stop in 10 s")
            self._follower = None
        if self.feed is not None:
            await self.feed.close()
        if self._http is not None:
            close_http(self._http)
            self._http = None


def serve(settings: Settings, loaded: LoadedModel) -> int:
    """`tickcast serve`: run until SIGTERM/SIGINT; returns the exit code (130: forced). The
    caller configures JAX first (`model.runtime.configure_jax`), as the CLI does."""
    return run_service(ServeService(settings, loaded), use_uvloop=settings.uvloop)
