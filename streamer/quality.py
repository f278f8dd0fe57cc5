"""Live scale-free quality per model version: `model.quality` over the served forecasts,
exported to Prometheus, the feed's heartbeat and the dashboard header.

Each micro-batch's forecasts go through one `model.quality.Scorer` (the code `tickcast
evaluate --json` runs for its `quality` block), so on the same ticks the live figures equal
the offline ones. A forecast counts for the model version that made it.

Series (label `version`: the last `KEEP_VERSIONS` versions that made scored forecasts; older
ones are removed, so label values stay bounded):

* `tickcast_quality_forecasts_total{version}`: scored forecasts
* `tickcast_quality_sq_log_error_total{version,forecaster}`: sum of squared log errors
  (`model`, `persistence`)
* `tickcast_quality_covered_total{version}`: outcomes inside the model's 90% interval
* `tickcast_quality_interval_score_total{version,forecaster}`: sum of Winkler (alpha 0.1)
  scores on log prices (`model`, `ewma_rw`)
* `tickcast_live_error_ratio{version}`: sqrt(sq model / sq persistence)
* `tickcast_live_coverage{version}`: covered / forecasts
* `tickcast_live_interval_score_ratio{version}`: interval score, model / EWMA random walk

The gauges cover everything the version served in this process (what `evaluate` computes
over a test split); the counters give any recent window in PromQL, e.g. the coverage over
5 minutes: `rate(tickcast_quality_covered_total[5m]) / rate(tickcast_quality_forecasts_total[5m])`
(the alert rules in deploy/prometheus/alerts.yml).
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from model.quality import Quality, Resolved, Scorer

__all__ = ["KEEP_VERSIONS", "LiveQuality"]

KEEP_VERSIONS = 3
MAX_SYMBOLS = 100_000  # symbols the scorer holds (~175 bytes each); the least recent go first


class LiveQuality:
    """The live quality series of one serving process.

    Args:
      registry: where the series are registered.
      max_symbols: bound on the per-symbol scoring state.
    """

    def __init__(self, registry: CollectorRegistry, max_symbols: int = MAX_SYMBOLS) -> None:
        r = registry
        self.max_symbols = max_symbols
        self.scorer: Scorer | None = None  # made on the first batch, with the model's window
        self.totals: dict[str, Quality] = {}  # version -> sums, insertion order = age
        self.forecasts = Counter("tickcast_quality_forecasts", "Scored forecasts (resolved by "
                                 "the next tick, after the warm-up window)", ["version"],
                                 registry=r)  # fmt: skip
        self.sq_log_error = Counter(
            "tickcast_quality_sq_log_error",
            "Sum of squared log-price errors of scored forecasts",
            ["version", "forecaster"],
            registry=r,
        )
        self.covered = Counter("tickcast_quality_covered", "Scored outcomes inside the model's "
                               "90% interval", ["version"], registry=r)  # fmt: skip
        self.interval_score_total = Counter(
            "tickcast_quality_interval_score",
            "Sum of Winkler (alpha 0.1) interval scores on log prices",
            ["version", "forecaster"],
            registry=r,
        )
        self.error_ratio = Gauge(
            "tickcast_live_error_ratio",
            "RMSE of log errors, model over persistence, over the version's scored forecasts",
            ["version"],
            registry=r,
        )
        self.coverage = Gauge(
            "tickcast_live_coverage",
            "Share of outcomes inside the model's 90% interval (version's scored forecasts)",
            ["version"],
            registry=r,
        )
        self.score_ratio = Gauge(
            "tickcast_live_interval_score_ratio",
            "Winkler interval score, model over the EWMA random walk (lambda 0.94)",
            ["version"],
            registry=r,
        )

    def record(
        self,
        symbols: list[str],
        price: Any,
        forecast: Any,
        lower: Any,
        upper: Any,
        warming: Any,
        version: str,
        window: int,
    ) -> Resolved:
        """Fold one micro-batch's forecasts (`[n]` arrays, in each symbol's tick order, all
        made by `version`); returns the forecasts they resolved."""
        if self.scorer is None or self.scorer.window != window:
            self.scorer = Scorer(window, max_symbols=self.max_symbols)
        res = self.scorer.update(symbols, price, forecast, lower, upper, version, warming)
        if version not in self.totals:  # its series exist from its first batch, at 0, so
            self._add(version, Quality())  # a PromQL increase() sees the first forecasts
        for v, q in res.by_version().items():
            self._add(v, q)
        return res

    def _add(self, version: str, q: Quality) -> None:
        if version not in self.totals:
            self.totals[version] = Quality()
            for old in list(self.totals)[:-KEEP_VERSIONS]:  # bounded label values
                del self.totals[old]
                self._remove(old)
        total = self.totals[version] = self.totals[version] + q
        self.forecasts.labels(version).inc(q.n)
        self.sq_log_error.labels(version, "model").inc(q.sq_model)
        self.sq_log_error.labels(version, "persistence").inc(q.sq_persistence)
        self.covered.labels(version).inc(q.covered)
        self.interval_score_total.labels(version, "model").inc(q.score_model)
        self.interval_score_total.labels(version, "ewma_rw").inc(q.score_rw)
        for gauge, value in ((self.error_ratio, total.error_ratio),
                             (self.coverage, total.coverage),
                             (self.score_ratio, total.interval_score_ratio)):  # fmt: skip
            gauge.labels(version).set(value)

    def _remove(self, version: str) -> None:
        for metric in (self.forecasts, self.covered, self.error_ratio, self.coverage,
                       self.score_ratio):  # fmt: skip
            metric.remove(version)
        self.sq_log_error.remove(version, "model")
        self.sq_log_error.remove(version, "persistence")
        self.interval_score_total.remove(version, "model")
        self.interval_score_total.remove(version, "ewma_rw")

    def status(self, version: str) -> dict[str, Any]:
        """`version`'s figures for the heartbeat: n, error_ratio, coverage90,
        interval_score_ratio (None where undefined)."""
        q = self.totals.get(version, Quality())

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        return {
            "version": version,
            "n": q.n,
            "error_ratio": num(q.error_ratio),
            "coverage90": num(q.coverage),
            "interval_score_ratio": num(q.interval_score_ratio),
        }
