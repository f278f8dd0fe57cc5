"""Prometheus metrics of the serving path. Recorded once per micro-batch, never per tick
(a prometheus-client call costs about a microsecond).

Each `Metrics` owns its registry, so several servers (tests, benchmarks) can live in one
process; `serve_http` exposes it on 127.0.0.1.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

from streamer.core.ticks import REASONS, SKIP_REASONS
from streamer.quality import LiveQuality

# Sub-millisecond buckets first: a step is tens of microseconds, a batch a few ms.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)


class Metrics:
    """Every series `tickcast serve` exports (names prefixed `tickcast_`)."""

    def __init__(self, registry: CollectorRegistry | None = None, ewm_ticks: float = 1000.0):
        r = self.registry = registry or CollectorRegistry()
        self.ticks_consumed = Counter(
            "tickcast_ticks_consumed", "Ticks taken from Kafka", registry=r
        )
        self.ticks_rejected = Counter(
            "tickcast_ticks_rejected", "Ticks sent to the dead-letter topic", ["reason"], registry=r
        )
        for reason in REASONS:
            self.ticks_rejected.labels(reason)
        self.ticks_skipped = Counter(
            "tickcast_ticks_skipped",
            "Messages of the ticks format that are not ticks (acks, heartbeats, open klines)",
            ["reason"],
            registry=r,
        )
        for reason in SKIP_REASONS:
            self.ticks_skipped.labels(reason)
        self.forecasts_published = Counter(
            "tickcast_forecasts_published", "Forecasts published", registry=r
        )
        self.ticks_replayed = Counter(
            "tickcast_ticks_replayed",
            "Ticks re-applied after a restore to rebuild state (no forecast published)",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "tickcast_consumer_lag",
            "Ticks behind the end of each partition",
            ["partition"],
            registry=r,
        )
        self.batch_ticks = Histogram(
            "tickcast_batch_ticks", "Ticks per micro-batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.step_seconds = Histogram(
            "tickcast_step_seconds",
            "Device step per micro-batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "tickcast_batch_seconds",
            "Whole micro-batch: decode, step, publish, commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tick_to_forecast_seconds = Histogram(
            "tickcast_tick_to_forecast_seconds",
            "From the tick's Kafka timestamp to its forecast's publication (sampled per batch: "
            "oldest and newest tick)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active_symbols = Gauge("tickcast_active_symbols", "Symbols held", registry=r)
        self.evictions = Counter("tickcast_evictions", "Symbols evicted", registry=r)
        self.state_records = Counter(
            "tickcast_state_records", "Per-symbol state records written", registry=r
        )
        self.state_restored = Counter(
            "tickcast_state_restored",
            "Per-symbol states restored from the state topic",
            registry=r,
        )
        # Group membership and fencing (streamer/serve/processor.py, docs/stream.md).
        self.rebalances = Counter(
            "tickcast_rebalances",
            "Rebalances this instance took part in (each new assignment of ticks partitions)",
            registry=r,
        )
        self.fenced = Counter(
            "tickcast_fenced",
            "Ticks partitions whose transactional producer was fenced: another instance took "
            "the partition over while this one still held it (expelled: frozen or stalled)",
            registry=r,
        )
        self.assignment_to_publish_seconds = Histogram(
            "tickcast_assignment_to_publish_seconds",
            "From a ticks partition's assignment to its first committed forecasts: producer "
            "fencing, state restore, replay, first transaction",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.model = Info("tickcast_model", "The model serving", registry=r)
        self.live_rmse = Gauge(
            "tickcast_live_rmse",
            "Exponentially weighted RMSE of next-tick forecasts (price units)",
            ["forecaster"],
            registry=r,
        )
        # The websocket feed (streamer/feed/server.py).
        self.feed_connections = Gauge(
            "tickcast_feed_connections", "Open websocket feed connections", registry=r
        )
        self.feed_subscriptions = Gauge(
            "tickcast_feed_subscriptions",
            "Symbol subscriptions over all feed connections (a wildcard counts once)",
            registry=r,
        )
        self.feed_messages_sent = Counter(
            "tickcast_feed_messages_sent", "Websocket messages sent", ["type"], registry=r
        )
        self.feed_deliveries = Counter(
            "tickcast_feed_deliveries", "Forecasts delivered to feed clients", registry=r
        )
        self.feed_conflated = Counter(
            "tickcast_feed_conflated",
            "Forecasts replaced by a newer one for a client that fell behind",
            registry=r,
        )
        self.feed_closed = Counter(
            "tickcast_feed_closed",
            "Feed connections closed by the server",
            ["reason"],
            registry=r,
        )
        for reason in ("slow", "unauthorized", "max_connections"):
            self.feed_closed.labels(reason)
        self.feed_errors = Counter(
            "tickcast_feed_errors", "Error replies to feed clients", ["code"], registry=r
        )
        self.feed_send = Histogram(
            "tickcast_feed_send_seconds",
            "From a forecast's publication to the hub until its frame is written to the socket",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Model versions and hot swaps (streamer/serve/follower.py).
        self.model_swaps = Counter("tickcast_model_swaps", "Hot swaps to a new model version",
                             registry=r)  # fmt: skip
        self.model_swap_seconds = Histogram(
            "tickcast_model_swap_seconds",
            "From a version's announcement to serving it: load, compile, re-warm, swap",
            buckets=(*LATENCY_BUCKETS, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.model_swap_pause_seconds = Histogram(
            "tickcast_model_swap_pause_seconds",
            "The swap's final round, between two micro-batches (what ticks wait for)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_refused = Counter(
            "tickcast_model_refused",
            "Announced model versions refused (the serving model stays)",
            ["reason"],
            registry=r,
        )
        for reason in ("missing", "corrupt", "mismatch", "invalid", "error"):
            self.model_refused.labels(reason)
        self.model_announced_rmse = Gauge(
            "tickcast_model_announced_rmse",
            "RMSE on the retrain job's evaluation slice, from the latest announcement",
            ["forecaster"],
            registry=r,
        )
        self.live_rmse_by_version = Gauge(
            "tickcast_live_rmse_by_version",
            "Exponentially weighted RMSE of next-tick forecasts per model version that made "
            "them (the last 3 versions; persistence over the same ticks beside it)",
            ["version", "forecaster"],
            registry=r,
        )
        # Scale-free quality per model version (streamer/quality.py).
        self.quality = LiveQuality(r)
        self._alpha = 1.0 / ewm_ticks
        self._mse = {"model": math.nan, "persistence": math.nan}
        self._by_version: dict[str, dict[str, float]] = {}

    def record_errors(
        self, sq_model: float, sq_persistence: float, n: int, version: str | None = None
    ) -> None:
        """Fold one batch's squared errors into the rolling RMSE (weight of n ticks), overall
        and for the model `version` that made the forecasts."""
        if n == 0:
            return
        keep = (1 - self._alpha) ** n
        per = None
        if version is not None:
            if version not in self._by_version:
                self._by_version[version] = {"model": math.nan, "persistence": math.nan}
                for old_version in list(self._by_version)[:-3]:  # bounded label set
                    del self._by_version[old_version]
                    for name in ("model", "persistence"):
                        self.live_rmse_by_version.remove(old_version, name)
            per = self._by_version[version]
        for name, sq in (("model", sq_model), ("persistence", sq_persistence)):
            mean = sq / n
            for mse in (self._mse, per):
                if mse is None:
                    continue
                old = mse[name]
                mse[name] = mean if math.isnan(old) else keep * old + (1 - keep) * mean
            self.live_rmse.labels(name).set(math.sqrt(self._mse[name]))
            if per is not None:
                self.live_rmse_by_version.labels(version, name).set(math.sqrt(per[name]))

    def version_rmse(self, version: str) -> dict[str, float | None]:
        """The rolling RMSE of one model version's forecasts and of persistence beside it."""
        mse = self._by_version.get(version, {})
        return {k: None if math.isnan(v) else math.sqrt(v) for k, v in mse.items()}

    def set_announced_scores(self, scores: Any) -> None:
        """Export the RMSEs an announcement carries ({name: rmse} or {name: {"rmse": x}})."""
        if not isinstance(scores, dict):
            return
        for name, v in scores.items():
            rmse = v.get("rmse") if isinstance(v, dict) else v
            if isinstance(rmse, int | float) and math.isfinite(rmse):
                self.model_announced_rmse.labels(str(name)).set(float(rmse))

    def rolling_rmse(self) -> dict[str, float | None]:
        """The rolling RMSE of the model and of persistence (None before any error)."""
        return {k: None if math.isnan(v) else math.sqrt(v) for k, v in self._mse.items()}

    def set_model(self, info: dict[str, Any]) -> None:
        self.model.info({k: str(v) for k, v in info.items()})


def serve_http(metrics: Metrics, host: str, port: int) -> Any:
    """Expose the registry at http://host:port/metrics from a daemon thread; returns the
    server (`close_http` stops it)."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    assert isinstance(thread, threading.Thread)
    return server


def close_http(server: Any) -> None:
    server.shutdown()
    server.server_close()
