"""Scale-free forecast quality: one definition for `tickcast evaluate`, the retrain job and
the live metrics of `tickcast serve`.

Prices of different symbols differ by many orders of magnitude (1e-8 to 1e9), so every
figure here is computed on log prices, where an error is a relative error and a symbol's
price level cannot weigh in. For a forecast made after tick t (price p_t) of tick t+1
(price y = p_{t+1}), with point forecast f (the median) and central 90% interval [lo, hi]:

* model log error          e_m = log y - log f
* persistence log error    e_p = log y - log p_t           (the random walk's point forecast)
* error ratio              sqrt(sum e_m^2 / sum e_p^2)      (< 1: the model beats persistence)
* coverage                 share of y inside [lo, hi]       (0.9 when calibrated)
* interval score           Winkler (1972) with alpha = 0.1 on log prices:
                             S = (u - l) + (2/alpha)(l - x)[x < l] + (2/alpha)(x - u)[x > u]
                           with l = log lo, u = log hi, x = log y; lower is better
* interval score ratio     sum S_model / sum S_rw

The reference interval is a random walk with an EWMA volatility (RiskMetrics, J.P. Morgan
1996, lambda = 0.94 for daily data): [log p_t - z s_t, log p_t + z s_t], z = Phi^-1(0.95),
s_t^2 an exponentially weighted mean of the squared log returns r_k up to and including
r_t. Its k-th update uses the gain max(1/k, 1 - lambda): a running mean for the first
1 / (1 - lambda) ~ 17 returns (no seed to choose), then the RiskMetrics recursion.

Pooling: the sums run over every scored forecast of every symbol. Log errors are
scale-free, so a symbol at 1e-8 and one at 1e9 with the same relative volatility weigh the
same; only relative volatility and the number of forecasts set a symbol's weight.

A forecast is scored when its symbol had at least `window` ticks when it was made (the model
and the random walk both warmed on the same ticks: the engine's `warming` rule and
`model.evaluate`'s warm-up window) and both prices are positive and finite. `Scorer` is the
streaming form (the server feeds it each micro-batch's forecasts); `score_series` runs the
same `Scorer` over one offline series, so live and offline figures come from one code path.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

__all__ = [
    "ALPHA",
    "LAMBDA",
    "Z90",
    "Quality",
    "Resolved",
    "Scorer",
    "ewma_gain",
    "score_series",
    "winkler",
]

ALPHA = 0.1  # the interval's miss rate: central 90%
LAMBDA = 0.94  # RiskMetrics (1996) decay for daily data
Z90 = 1.6448536269514722  # Phi^-1(0.95): half-width of a central 90% Gaussian interval in sd


def winkler(
    lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, alpha: float = ALPHA
) -> np.ndarray:
    """Winkler (1972) interval score of the central (1 - alpha) interval, elementwise over
    arrays of one shape, in the arrays' units: width plus 2/alpha times the miss distance."""
    below = np.maximum(lower - actual, 0.0)
    above = np.maximum(actual - upper, 0.0)
    return np.asarray((upper - lower) + (2.0 / alpha) * (below + above))


def ewma_gain(k: int, lam: float = LAMBDA) -> float:
    """Weight of the k-th squared return (k >= 1) in the EWMA variance: max(1/k, 1 - lam)."""
    return max(1.0 / k, 1.0 - lam)


@dataclass
class Quality:
    """Sums over scored forecasts (all on log prices); ratios are properties.

    Adding two `Quality` pools their forecasts. Every ratio is NaN without forecasts.
    """

    n: int = 0
    sq_model: float = 0.0  # sum e_m^2
    sq_persistence: float = 0.0  # sum e_p^2
    covered: float = 0.0  # forecasts whose outcome fell inside the model's interval
    score_model: float = 0.0  # sum of the model's Winkler scores
    width_model: float = 0.0  # sum of log(hi / lo)
    covered_rw: float = 0.0
    score_rw: float = 0.0  # sum of the EWMA random walk's Winkler scores
    width_rw: float = 0.0  # sum of 2 z s_t

    def __add__(self, other: Quality) -> Quality:
        return Quality(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def error_ratio(self) -> float:
        """RMSE of log errors, model over persistence."""
        return math.sqrt(_div(self.sq_model, self.sq_persistence))

    @property
    def coverage(self) -> float:
        """Share of outcomes inside the model's 90% interval."""
        return _div(self.covered, self.n)

    @property
    def interval_score_ratio(self) -> float:
        """Mean Winkler score of the model's interval over the EWMA random walk's."""
        return _div(self.score_model, self.score_rw)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the three ratios and each forecaster's figures (means, log units)."""
        n = self.n
        return {
            "n": n,
            "error_ratio": self.error_ratio,
            "coverage90": self.coverage,
            "interval_score_ratio": self.interval_score_ratio,
            "model": {
                "log_rmse": math.sqrt(_div(self.sq_model, n)),
                "coverage90": self.coverage,
                "interval_width": _div(self.width_model, n),
                "interval_score": _div(self.score_model, n),
            },
            "persistence": {"log_rmse": math.sqrt(_div(self.sq_persistence, n))},
            "ewma_rw": {
                "log_rmse": math.sqrt(_div(self.sq_persistence, n)),
                "coverage90": _div(self.covered_rw, n),
                "interval_width": _div(self.width_rw, n),
                "interval_score": _div(self.score_rw, n),
            },
        }


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


@dataclass
class Resolved:
    """Forecasts resolved by one `Scorer.update`, columnar, `[n]` each, in input order."""

    version: list[str]  # the model version that made each forecast
    e_model: np.ndarray  # log y - log f
    e_persistence: np.ndarray  # log y - log p_t
    covered: np.ndarray  # bool: y in [lo, hi]
    score_model: np.ndarray  # Winkler, log units
    width_model: np.ndarray
    covered_rw: np.ndarray
    score_rw: np.ndarray
    width_rw: np.ndarray

    def __len__(self) -> int:
        return len(self.version)

    def quality(self, mask: np.ndarray | None = None) -> Quality:
        """The sums over all rows, or over `mask` (bool `[n]`)."""
        m = np.ones(len(self), bool) if mask is None else mask
        return Quality(
            n=int(m.sum()),
            sq_model=float(np.sum(self.e_model[m] ** 2)),
            sq_persistence=float(np.sum(self.e_persistence[m] ** 2)),
            covered=float(np.sum(self.covered[m])),
            score_model=float(np.sum(self.score_model[m])),
            width_model=float(np.sum(self.width_model[m])),
            covered_rw=float(np.sum(self.covered_rw[m])),
            score_rw=float(np.sum(self.score_rw[m])),
            width_rw=float(np.sum(self.width_rw[m])),
        )

    def by_version(self) -> dict[str, Quality]:
        """The sums per model version that made the forecasts."""
        if not self.version:
            return {}
        v = np.asarray(self.version)
        return {str(k): self.quality(v == k) for k in dict.fromkeys(self.version)}


class Scorer:
    """Streaming scale-free scoring of one-step forecasts, per symbol.

    Feed it every forecast in each symbol's tick order (`update`); each tick resolves the
    forecast its symbol's previous tick made. Per symbol it holds the tick count, the last
    price, the EWMA variance and the pending forecast: about 200 bytes; at most
    `max_symbols` symbols are held (least recently updated dropped first; a dropped symbol
    warms up again).

    Args:
      window: ticks a symbol needs before its forecasts are scored (the model's window).
      lam: EWMA decay of the random walk's variance (RiskMetrics 0.94).
      max_symbols: bound on the symbols held.
    """

    def __init__(self, window: int, lam: float = LAMBDA, max_symbols: int = 1 << 20) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2 (got {window})")
        self.window = window
        self.lam = lam
        self.max_symbols = max_symbols
        # symbol -> [count, last price, variance, point, lower, upper, version of the pending
        # forecast (None: nothing to score)]
        self._state: OrderedDict[str, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._state)

    def forget(self, symbols: Sequence[str]) -> None:
        """Drop these symbols' state (they start over: count, variance, pending forecast)."""
        for s in symbols:
            self._state.pop(s, None)

    def update(
        self,
        symbols: Sequence[str],
        price: np.ndarray,
        point: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        version: str | Sequence[str],
        warming: np.ndarray | None = None,
    ) -> Resolved:
        """Fold one batch of forecasts, each made at a tick of `price`, `[n]` arrays in each
        symbol's tick order; returns the forecasts these ticks resolve.

        A forecast that is NaN, `warming`, or made before its symbol's `window`-th tick is
        not scored (its tick still advances the symbol's count and variance).
        """
        n = len(symbols)
        versions = [version] * n if isinstance(version, str) else list(version)
        # Plain Python floats: the loop below is per forecast, and numpy scalars are slow.
        warm = [False] * n if warming is None else np.asarray(warming, bool).tolist()
        p_arr = np.asarray(price, np.float64).tolist()
        f_arr = np.asarray(point, np.float64).tolist()
        lo_arr = np.asarray(lower, np.float64).tolist()
        hi_arr = np.asarray(upper, np.float64).tolist()
        rows: list[tuple[str, float, float, float, float, float, float]] = []
        state, lam, w = self._state, self.lam, self.window
        for i in range(n):
            sym, y = symbols[i], p_arr[i]
            st = state.get(sym)
            if st is None:
                st = state[sym] = [0, math.nan, math.nan, math.nan, math.nan, math.nan, None]
                if len(state) > self.max_symbols:
                    state.popitem(last=False)
            else:
                state.move_to_end(sym)
            if not (y > 0 and math.isfinite(y)):
                continue  # the engine rejects these; never poison a symbol's state
            count, last, var = st[0], st[1], st[2]
            if st[6] is not None:  # resolve the pending forecast of the previous tick
                rows.append((st[6], y, last, st[3], st[4], st[5], var))
            if count >= 1:
                r = math.log(y / last)
                var = r * r if count == 1 else var + ewma_gain(count, lam) * (r * r - var)
            count += 1
            fc, lo, hi = f_arr[i], lo_arr[i], hi_arr[i]
            ok = count >= w and not warm[i] and fc > 0 and lo > 0 and hi > 0 and var >= 0
            st[0], st[1], st[2] = count, y, var
            st[3], st[4], st[5], st[6] = fc, lo, hi, (versions[i] if ok else None)
        return _resolve(rows)


def _resolve(rows: list[tuple[str, float, float, float, float, float, float]]) -> Resolved:
    if not rows:
        z = np.zeros(0)
        return Resolved([], z, z, z.astype(bool), z, z, z.astype(bool), z, z)
    version = [r[0] for r in rows]
    a = np.asarray([r[1:] for r in rows], np.float64)
    y, last, f, lo, hi, var = (np.log(a[:, j]) if j < 5 else a[:, j] for j in range(6))
    half = Z90 * np.sqrt(var)
    lo_rw, hi_rw = last - half, last + half
    return Resolved(
        version=version,
        e_model=y - f,
        e_persistence=y - last,
        covered=(y >= lo) & (y <= hi),
        score_model=winkler(lo, hi, y),
        width_model=hi - lo,
        covered_rw=(y >= lo_rw) & (y <= hi_rw),
        score_rw=winkler(lo_rw, hi_rw, y),
        width_rw=2.0 * half,
    )


def score_series(
    price: np.ndarray,
    point: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    window: int,
    lam: float = LAMBDA,
) -> Resolved:
    """Offline scoring of one symbol: `price [m]` from the first tick the model was warmed
    on, `point`, `lower`, `upper` `[m]` the forecast made at each tick (NaN where none).
    Runs `Scorer` over it, so the result equals what the live path computes on these ticks."""
    return Scorer(window, lam).update(["_"] * len(price), price, point, lower, upper, "model")
