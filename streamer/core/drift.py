"""Drift detection on the live scale-free quality, for `tickcast retrain --on-drift`.

Pure and synchronous: forecasts in (the records of the forecasts topic, or columns), a
`Drift` out when the serving model's quality changed. The Kafka shell that tails the topic
and starts retraining attempts is `streamer.jobs.ondrift`.

Forecasts are scored by `model.quality.Scorer` (the live metrics' code), pooled over every
symbol. Two Page-Hinkley tests (Page 1954, Hinkley 1971; river's `PageHinkley`, mode "up")
watch the forecasts of the newest model version, one value per scored forecast:

* error: (e_m^2 - e_p^2) / s^2, the model's squared log error minus persistence's, over the
  EWMA random walk's variance at the forecast (RiskMetrics 0.94): scale-free and
  volatility-free, mean about 0 for a model as good as persistence, positive when it is
  worse (what the error ratio measures); clipped to +-`clip` so one crash tick cannot
  decide alone;
* coverage: 1 when the outcome fell outside the 90% interval, else 0 (mean 0.1 when
  calibrated; up when the interval is too narrow for the new regime).

A new model version resets both (its errors are another stream); so does `reset()`, which
the shell calls when an attempt starts. Defaults were set on `synthetic(kind="drift")`
(lag-1 autocorrelation +0.6, then -0.6) and on the bundled daily series (no alarm over
their whole test splits with the bundled models; tests/streamer/test_drift_detector.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from river.drift import PageHinkley

from model.quality import Z90, Resolved, Scorer

__all__ = ["Drift", "DriftConfig", "DriftDetector"]


@dataclass(frozen=True)
class DriftConfig:
    """Page-Hinkley settings of the two tests (values in the units of each signal)."""

    error_delta: float = 0.1  # tolerated rise of the mean error signal (units of s^2)
    error_threshold: float = 200.0  # alarm when the cumulated rise exceeds this
    miss_delta: float = 0.05  # tolerated rise of the miss rate (0.1 when calibrated)
    miss_threshold: float = 40.0
    min_forecasts: int = 200  # scored forecasts since a reset before either test may fire
    clip: float = 10.0  # bound on one forecast's error signal
    alpha: float = 1.0  # forgetting factor of the cumulative sums (1: none)


@dataclass(frozen=True)
class Drift:
    """A detection: which test fired, on which version, after how many scored forecasts
    since the last reset, and the mean of its signal over them."""

    signal: str  # "error" or "coverage"
    version: str
    forecasts: int
    mean: float
    last_ts: int | None  # ts (epoch ms) of the tick that resolved the last forecast seen

    def describe(self) -> str:
        what = {"error": "error vs persistence", "coverage": "interval misses"}[self.signal]
        return (
            f"drift in {what} of model {self.version} after {self.forecasts} scored "
            f"forecasts (mean signal {self.mean:.3f})"
        )


class DriftDetector:
    """Both tests over the scored forecasts of the newest model version.

    Args:
      window: the model's window (forecasts are scored from a symbol's window-th tick on).
      config: thresholds.
    """

    def __init__(self, window: int, config: DriftConfig = DriftConfig()) -> None:
        self.config = config
        self.scorer = Scorer(window)
        self.version: str | None = None
        self.seen_versions: set[str] = set()
        self.reset()

    def reset(self) -> None:
        """Start both tests over (the scorer's per-symbol state stays)."""
        c = self.config
        self.error = PageHinkley(min_instances=c.min_forecasts, delta=c.error_delta,
                                 threshold=c.error_threshold, alpha=c.alpha, mode="up")  # fmt: skip
        self.miss = PageHinkley(min_instances=c.min_forecasts, delta=c.miss_delta,
                                threshold=c.miss_threshold, alpha=c.alpha, mode="up")  # fmt: skip
        self.n = 0
        self._sums = {"error": 0.0, "coverage": 0.0}

    def update_columns(
        self,
        symbols: Sequence[str],
        price: np.ndarray,
        forecast: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        versions: Sequence[str],
        warming: np.ndarray | None = None,
        ts: Sequence[int] | None = None,
    ) -> Drift | None:
        """Fold forecasts (`[n]`, each symbol's in tick order); the first drift, if any."""
        res = self.scorer.update(symbols, price, forecast, lower, upper, versions, warming)
        last_ts = int(ts[-1]) if ts is not None and len(ts) else None
        return self.update(res, last_ts)

    def update_records(self, values: Sequence[bytes | None]) -> Drift | None:
        """Fold forecast records as published on the forecasts topic (JSON, see
        `streamer.hub`); records that are not forecasts are skipped."""
        rows: list[dict[str, Any]] = []
        for v in values:
            try:
                d = orjson.loads(v) if v is not None else None
            except orjson.JSONDecodeError:
                continue
            if isinstance(d, dict) and {"symbol", "price", "forecast", "lower", "upper",
                                        "model"} <= d.keys():  # fmt: skip
                rows.append(d)
        if not rows:
            return None

        def col(k: str) -> np.ndarray:
            return np.asarray([float(d[k]) for d in rows], np.float64)

        return self.update_columns(
            [str(d["symbol"]) for d in rows], col("price"), col("forecast"), col("lower"),
            col("upper"), [str(d["model"]) for d in rows],
            np.asarray([bool(d.get("warming", False)) for d in rows]),
            [int(d.get("ts", 0)) for d in rows],
        )  # fmt: skip

    def update(self, res: Resolved, last_ts: int | None = None) -> Drift | None:
        """Fold resolved forecasts; the first drift, if any (the tests start over after it)."""
        if not len(res):
            return None
        c = self.config
        var = (res.width_rw / (2 * Z90)) ** 2
        err = np.clip((res.e_model**2 - res.e_persistence**2) / np.where(var > 0, var, np.nan),
                      -c.clip, c.clip)  # fmt: skip
        miss = (~res.covered).astype(np.float64)
        for i, v in enumerate(res.version):
            if v != self.version:
                if v in self.seen_versions:
                    continue  # an older version's late forecasts
                self.version = v
                self.seen_versions.add(v)
                self.reset()
            if not np.isfinite(err[i]):
                continue
            self.n += 1
            self._sums["error"] += float(err[i])
            self._sums["coverage"] += float(miss[i])
            self.error.update(float(err[i]))  # type: ignore[no-untyped-call]
            self.miss.update(float(miss[i]))  # type: ignore[no-untyped-call]
            for name, test in (("error", self.error), ("coverage", self.miss)):
                if test.drift_detected:
                    drift = Drift(name, v, self.n, self._sums[name] / self.n, last_ts)
                    self.reset()
                    return drift
        return None
