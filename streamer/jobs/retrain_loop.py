"""`tickcast retrain --every` and `--on-drift`: the retraining job as a long-running service
(`streamer.lifecycle`: start, main loop, shutdown; signals handled there, once).

Attempts (`streamer.jobs.retrain.run_once`) start on the clock (`every_s`: first at once,
then every `every_s`, start to start; an overrun starts the next at once), on drift (the
forecasts topic tailed into `streamer.core.drift.DriftDetector` by `ForecastTail`: a
detection starts an attempt, `settle_s` later and at most one per `cooldown_s`; a drift
inside the cooldown waits for its end), or both. Each attempt's trigger is a log line at
INFO, a count in
`tickcast_retrain_triggers_total{reason}` ("schedule" or "drift") and a `trigger` field in
its attempts.jsonl record; detections are counted in
`tickcast_retrain_drift_detected_total{signal}` whether or not they start an attempt. The
detector starts over when an attempt starts and ends. A failed attempt is logged and
counted; the loop carries on.

An attempt trains for minutes: it runs in a daemon thread, so the first signal lets it
finish and the second ends the process at once.
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

from prometheus_client import Counter, start_http_server

from model.registry import Registry
from streamer.core.drift import Drift, DriftConfig
from streamer.jobs.forecast_tail import ForecastTail
from streamer.jobs.retrain import Options, RetrainMetrics, resolve_champion, run_once
from streamer.lifecycle import run_service
from streamer.settings import Settings

__all__ = ["RetrainLoop", "TriggerMetrics", "run_loop"]

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


class RetrainLoop:
    """The retraining job's loop: a `streamer.lifecycle.Service`.

    Args:
      settings: topics, registry, bootstrap.
      opts: each attempt's options (its `trigger` is filled in per attempt).
      every_s: seconds between scheduled attempts (None: no schedule).
      on_drift: also start attempts on drift in the live quality.
      cooldown_s: at most one drift-started attempt per this many seconds.
      settle_s: after a detection, wait this long before the attempt, so that the ticks it
        trains on include some of the new regime (0: at once).
      metrics_port: Prometheus endpoint on `metrics_host` (0: none).
      max_runs: stop after this many attempts (None: until stopped).
      stop_flag: a thread-safe way to stop it (besides signals), e.g. from a test.
      from_beginning: judge the forecasts topic from its start (tests), not its end.
    """

    def __init__(
        self,
        settings: Settings,
        opts: Options,
        *,
        every_s: float | None = None,
        on_drift: bool = False,
        cooldown_s: float = 600.0,
        settle_s: float = 0.0,
        drift_config: DriftConfig = DriftConfig(),  # noqa: B008 - frozen dataclass
        metrics: RetrainMetrics | None = None,
        metrics_host: str = "127.0.0.1",
        metrics_port: int = 0,
        max_runs: int | None = None,
        stop_flag: threading.Event | None = None,
        registry: Registry | None = None,
        from_beginning: bool = False,
    ) -> None:
        if every_s is None and not on_drift:
            raise ValueError("a retrain loop needs a schedule (every_s), on_drift, or both")
        self.settings, self.opts = settings, opts
        self.every_s, self.on_drift, self.cooldown_s = every_s, on_drift, cooldown_s
        self.settle_s = settle_s
        self.drift_config = drift_config
        self.metrics = metrics or RetrainMetrics()
        self.why = TriggerMetrics(self.metrics) if on_drift else None
        self.metrics_host, self.metrics_port = metrics_host, metrics_port
        self.max_runs = max_runs
        self.stop_flag = stop_flag or threading.Event()
        self.registry = registry or Registry(settings.registry)
        self.from_beginning = from_beginning
        self.tail: ForecastTail | None = None
        self.runs = 0
        self._http: Any = None

    async def start(self) -> None:
        """Open the metrics endpoint; with `on_drift`, start tailing the forecasts topic."""
        if self.metrics_port:
            self._http, _ = start_http_server(
                self.metrics_port, addr=self.metrics_host, registry=self.metrics.registry
            )
            log.info("retrain metrics on http://%s:%d/metrics", self.metrics_host,
                     self.metrics_port)  # fmt: skip
        if self.on_drift:
            champion = await asyncio.to_thread(resolve_champion, self.settings, self.registry)
            self.tail = ForecastTail(self.settings, champion.config.window, self.drift_config,
                                     self.from_beginning)  # fmt: skip
            self.tail.start()
            log.info("retrain on drift: watching %s (cooldown %.0f s%s)",
                     self.settings.forecasts_topic, self.cooldown_s,
                     f", and every {self.every_s:.0f} s" if self.every_s else "")  # fmt: skip

    def _stopped(self, stop: asyncio.Event) -> bool:
        return stop.is_set() or self.stop_flag.is_set()

    async def _wait(self, stop: asyncio.Event, seconds: float) -> Drift | None:
        """Up to `seconds`, or until stopped: the next detected drift, if any."""
        deadline = time.monotonic() + max(0.0, seconds)
        while not self._stopped(stop):
            if self.tail is not None:
                with contextlib.suppress(queue.Empty):
                    return self.tail.drifts.get_nowait()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(left, 0.1))
        return None

    async def main_loop(self, stop: asyncio.Event) -> None:
        """Start attempts on the schedule and on drift until stopped or `max_runs`."""
        next_scheduled = time.monotonic() if self.every_s else math.inf
        last_drift_run = -math.inf
        pending: Drift | None = None
        detected_at = -math.inf
        while not self._stopped(stop) and (self.max_runs is None or self.runs < self.max_runs):
            now = time.monotonic()
            wake = next_scheduled
            if pending is not None:
                wake = min(wake, max(last_drift_run + self.cooldown_s, detected_at + self.settle_s))
            d = await self._wait(stop, min(wake - now, 0.5))
            if d is not None and self.why is not None:
                self.why.detected.labels(d.signal).inc()
                log.info("%s", d.describe())
                if pending is None:
                    detected_at = time.monotonic()
                pending = d
            now = time.monotonic()
            trigger: dict[str, Any] | None = None
            if (
                pending is not None
                and now - last_drift_run >= self.cooldown_s
                and now - detected_at >= self.settle_s
            ):
                trigger = {"reason": "drift", **dataclasses.asdict(pending),
                           "detail": pending.describe()}  # fmt: skip
                pending, last_drift_run = None, now
            elif now >= next_scheduled:
                trigger = {"reason": "schedule", "detail": f"every {self.every_s:.0f} s"}
            if trigger is None or self._stopped(stop):
                continue
            if trigger["reason"] == "schedule" and self.every_s:
                next_scheduled = now + self.every_s
            await self._attempt(trigger)

    async def _attempt(self, trigger: dict[str, Any]) -> None:
        self.runs += 1
        n, reason = self.runs, trigger["reason"]
        if self.why is not None:
            self.why.triggers.labels(reason).inc()
        log.info("retrain attempt %d started by %s: %s", n, reason, trigger["detail"])
        if self.tail is not None:
            self.tail.reset()
        started = time.monotonic()
        opts = dataclasses.replace(self.opts, trigger=trigger if self.on_drift else None)
        try:
            rec = await _in_daemon_thread(run_once, self.settings, opts, self.registry)
            self.metrics.record(rec["outcome"], time.monotonic() - started, rec["scores"])
            log.info("retrain attempt %d (%s): %s (%s)", n, reason, rec["outcome"],
                     rec["reason"])  # fmt: skip
        except Exception:
            log.exception("retrain attempt %d failed", n)
            self.metrics.record("failed", time.monotonic() - started, None)
        if self.tail is not None:
            self.tail.reset()  # what arrived during the attempt is judged afresh

    async def shutdown(self) -> None:
        """Stop the tail and the metrics endpoint."""
        if self.tail is not None:
            self.tail.halt()
            await asyncio.to_thread(self.tail.join, 10)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


async def _in_daemon_thread(fn: Any, *args: Any) -> Any:
    """`fn(*args)` in a daemon thread: unlike `asyncio.to_thread`, a forced exit (a second
    signal) does not wait for it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():  # the awaiting task was cancelled (a forced stop)
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as e:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name="retrain-attempt", daemon=True).start()
    return await done


def run_loop(job: RetrainLoop) -> int:
    """Run `job` until SIGINT/SIGTERM (signals only in the main thread), its stop flag or its
    `max_runs`; 0, or 130 when a second signal cut it short."""
    signals = threading.current_thread() is threading.main_thread()
    return run_service(job, use_uvloop=False, signals=signals)
