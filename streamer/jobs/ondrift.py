"""`tickcast retrain --on-drift`: retraining attempts started by drift in the live quality.

A thread tails the forecasts topic (read_committed, from its end when the job starts) and
feeds every forecast to `streamer.core.drift.DriftDetector`; the main loop starts an attempt
(`streamer.jobs.retrain.run_once`) when a drift is detected, at most one per `cooldown_s` (a
drift inside the cooldown waits for its end), and, with `every_s`, also on the clock as
`streamer.jobs.retrain.loop` does. Each attempt's trigger is a log line at INFO, a count in
`tickcast_retrain_triggers_total{reason}` ("schedule" or "drift") and a `trigger` field in
its attempts.jsonl record; detections are counted in
`tickcast_retrain_drift_detected_total{signal}` whether or not they start an attempt. The
detector starts over when an attempt starts and when a new model version serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from prometheus_client import Counter, start_http_server

from model.registry import Registry
from streamer.core.drift import Drift, DriftConfig, DriftDetector
from streamer.jobs.retrain import (
    Options,
    RetrainMetrics,
    _stop_on_signals,
    resolve_champion,
    run_once,
)
from streamer.settings import Settings

__all__ = ["ForecastTail", "TriggerMetrics", "loop_on_drift"]

log = logging.getLogger(__name__)


class TriggerMetrics:
    """Why attempts start, on the retrain job's registry."""

    def __init__(self, metrics: RetrainMetrics) -> None:
        r = metrics.registry
        self.triggers = Counter("tickcast_retrain_triggers", "Retraining attempts started, by "
                                "what started them", ["reason"], registry=r)  # fmt: skip
        self.detected = Counter("tickcast_retrain_drift_detected", "Drifts detected in the live "
                                "quality (by test), attempt started or not", ["signal"],
                                registry=r)  # fmt: skip
        for reason in ("schedule", "drift"):
            self.triggers.labels(reason)
        for signal in ("error", "coverage"):
            self.detected.labels(signal)


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
        backoff = 0.5
        while not self._halt.is_set():
            try:
                asyncio.run(self._session())
                backoff = 0.5
            except Exception as e:  # Kafka down: retry; the detector keeps its state
                log.warning("forecast tail: %s: %s; retrying", type(e).__name__, e)
                self._halt.wait(backoff)
                backoff = min(backoff * 2, 10.0)

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
            parts = None
            while not parts and not self._halt.is_set():
                meta = await consumer._client.fetch_all_metadata()
                parts = meta.partitions_for_topic(s.forecasts_topic)
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


def loop_on_drift(
    settings: Settings,
    opts: Options,
    *,
    every_s: float | None = None,
    cooldown_s: float = 600.0,
    drift_config: DriftConfig = DriftConfig(),  # noqa: B008 - frozen dataclass
    metrics: RetrainMetrics | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 0,
    max_runs: int | None = None,
    stop: threading.Event | None = None,
    registry: Registry | None = None,
    from_beginning: bool = False,
) -> int:
    """Start an attempt on each detected drift (at most one per `cooldown_s`) and, with
    `every_s`, on the clock too (first at once, then every `every_s`, start to start),
    until SIGINT/SIGTERM, `stop` or `max_runs`. Returns 0. A failed attempt is logged and
    counted, as in `streamer.jobs.retrain.loop`. `from_beginning`: judge the forecasts topic from
    its start (tests), not from its end when the loop starts."""
    metrics = metrics or RetrainMetrics()
    why = TriggerMetrics(metrics)
    stop = stop or threading.Event()
    registry = registry or Registry(settings.registry)
    champion = resolve_champion(settings, registry)
    tail = ForecastTail(settings, champion.config.window, drift_config, from_beginning)
    tail.start()
    server = None
    if metrics_port:
        server, _ = start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
        log.info("retrain metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    runs = 0
    next_scheduled = time.monotonic() if every_s else math.inf
    last_drift_run = -math.inf
    pending: Drift | None = None
    log.info("retrain on drift: watching %s (cooldown %.0f s%s)", settings.forecasts_topic,
             cooldown_s, f", and every {every_s:.0f} s" if every_s else "")  # fmt: skip
    try:
        with _stop_on_signals(stop):
            while not stop.is_set() and (max_runs is None or runs < max_runs):
                now = time.monotonic()
                wake = next_scheduled
                if pending is not None:
                    wake = min(wake, last_drift_run + cooldown_s)
                with contextlib.suppress(queue.Empty):
                    d = tail.drifts.get(timeout=max(0.0, min(wake - now, 0.5)))
                    why.detected.labels(d.signal).inc()
                    log.info("%s", d.describe())
                    pending = d
                now = time.monotonic()
                trigger: dict[str, Any] | None = None
                if pending is not None and now - last_drift_run >= cooldown_s:
                    trigger = {"reason": "drift", **dataclasses.asdict(pending),
                               "detail": pending.describe()}  # fmt: skip
                    pending, last_drift_run = None, now
                elif now >= next_scheduled:
                    trigger = {"reason": "schedule", "detail": f"every {every_s:.0f} s"}
                if trigger is None:
                    continue
                if trigger["reason"] == "schedule" and every_s:
                    next_scheduled = now + every_s
                runs += 1
                why.triggers.labels(trigger["reason"]).inc()
                log.info("retrain attempt %d started by %s: %s", runs, trigger["reason"],
                         trigger["detail"])  # fmt: skip
                tail.reset()
                started = time.monotonic()
                try:
                    rec = run_once(settings, dataclasses.replace(opts, trigger=trigger), registry)
                    metrics.record(rec["outcome"], time.monotonic() - started, rec["scores"])
                    log.info("retrain attempt %d (%s): %s (%s)", runs, trigger["reason"],
                             rec["outcome"], rec["reason"])  # fmt: skip
                except KeyboardInterrupt:
                    raise
                except Exception:
                    log.exception("retrain attempt %d failed", runs)
                    metrics.record("failed", time.monotonic() - started, None)
                tail.reset()  # what arrived during the attempt is judged afresh
    finally:
        tail.halt()
        tail.join(10)
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0
