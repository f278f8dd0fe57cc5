"""The retrain loop (streamer/jobs/retrain_loop.py) without Kafka: drift starts attempts,
rate-limited, beside the clock. The tail, the champion and the attempt are stand-ins; the
real loop on a real broker is in e2e/test_drift.py."""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamer.core.drift import Drift
from streamer.jobs import retrain_loop
from streamer.jobs.retrain import Options, RetrainMetrics
from tests.streamer.harness import fresh_settings


class FakeTail:
    def __init__(self, *args: Any) -> None:
        self.drifts: queue.Queue[Drift] = queue.Queue()
        self.resets = 0
        FakeTail.last = self

    last: FakeTail

    def start(self) -> None: ...
    def halt(self) -> None: ...
    def join(self, timeout: float) -> None: ...

    def reset(self) -> None:
        self.resets += 1


def _run(monkeypatch: pytest.MonkeyPatch, script: Any, **kw: Any) -> tuple[list, RetrainMetrics]:
    calls: list[tuple[float, dict[str, Any]]] = []
    monkeypatch.setattr(retrain_loop, "ForecastTail", FakeTail)
    champion = SimpleNamespace(config=SimpleNamespace(window=10))
    monkeypatch.setattr(retrain_loop, "resolve_champion", lambda s, r: champion)

    def run_once(settings: Any, opts: Options, registry: Any) -> dict[str, Any]:
        calls.append((time.monotonic(), opts.trigger or {}))
        return {"outcome": "rejected", "reason": "test", "scores": {}}

    monkeypatch.setattr(retrain_loop, "run_once", run_once)
    metrics = RetrainMetrics(CollectorRegistry())
    stop = threading.Event()
    settings = fresh_settings("127.0.0.1:1")
    kwargs = {"stop_flag": stop, "metrics": metrics, "registry": object(), "on_drift": True, **kw}
    loop = retrain_loop.RetrainLoop(settings, Options(), **kwargs)
    job = threading.Thread(target=retrain_loop.run_loop, args=(loop,))
    job.start()
    time.sleep(0.2)
    try:
        script(FakeTail.last)
    finally:
        stop.set()
        job.join(10)
    return calls, metrics


def _drift(k: int) -> Drift:
    return Drift("error", "v1", 300 + k, 0.5, 1000 + k)


def test_drift_starts_an_attempt_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    def script(tail: FakeTail) -> None:
        tail.drifts.put(_drift(0))
        time.sleep(0.3)
        tail.drifts.put(_drift(1))  # inside the cooldown: waits for its end
        tail.drifts.put(_drift(2))  # replaces the waiting one: one attempt, not two
        time.sleep(1.6)

    t0 = time.monotonic()
    calls, metrics = _run(monkeypatch, script, cooldown_s=1.0)
    assert [c[1]["reason"] for c in calls] == ["drift", "drift"]
    assert [c[1]["last_ts"] for c in calls] == [1000, 1002]
    # (the cooldown runs from just before each attempt; a few ms of jitter either way)
    assert calls[1][0] - calls[0][0] >= 0.95 and calls[0][0] - t0 < 1.0
    assert "drift in error vs persistence of model v1" in calls[0][1]["detail"]
    r = metrics.registry
    assert r.get_sample_value("tickcast_retrain_triggers_total", {"reason": "drift"}) == 2
    assert r.get_sample_value("tickcast_retrain_triggers_total", {"reason": "schedule"}) == 0
    assert r.get_sample_value("tickcast_retrain_drift_detected_total", {"signal": "error"}) == 3
    assert FakeTail.last.resets == 4  # before and after each attempt


def test_combined_with_every(monkeypatch: pytest.MonkeyPatch) -> None:
    def script(tail: FakeTail) -> None:
        time.sleep(0.5)
        tail.drifts.put(_drift(0))
        time.sleep(1.0)

    calls, _ = _run(monkeypatch, script, every_s=0.8, cooldown_s=60.0)
    reasons = [c[1]["reason"] for c in calls]
    assert (
        reasons[0] == "schedule" and reasons.count("drift") == 1 and reasons.count("schedule") >= 2
    )


def test_settle_delays_a_drift_started_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    marks: list[float] = []

    def script(tail: FakeTail) -> None:
        marks.append(time.monotonic())
        tail.drifts.put(_drift(0))
        time.sleep(1.2)

    calls, _ = _run(monkeypatch, script, cooldown_s=0.0, settle_s=0.6)
    assert [c[1]["reason"] for c in calls] == ["drift"]
    assert calls[0][0] - marks[0] >= 0.6  # not at the detection: settle_s after it
