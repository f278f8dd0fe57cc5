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
COUNT, LAST, VAR, POINT, LOWER, UPPER, PENDING = range(7)  # columns of `Scorer.state`
MIN_ROUND = 16  # a round of fewer ticks costs more in numpy calls than one by one


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
    price, the EWMA variance and the pending forecast, one row of a numpy array (about 175
    bytes a symbol with its dict entry, measured with tracemalloc); at most `max_symbols`
    symbols are held once an `update` returns (the least recently updated dropped first,
    down to 90%; a dropped symbol warms up again).

    One `update` is vectorised: a batch holding k ticks of one symbol is folded in k
    rounds, each a handful of numpy operations over the symbols ticking in it; once a
    round would hold fewer than `MIN_ROUND` ticks (a small batch, the tail of a burst of
    one symbol), the remaining ticks are folded one by one (plain floats). Past
    `max_symbols`, the least recently updated tenth goes at once.

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
        self._row: dict[str, int] = {}  # symbol -> its row of `state`
        self._free: list[int] = []  # rows of dropped symbols
        self._versions: list[str] = []  # the versions that made pending forecasts, by code
        self._codes: dict[str, int] = {}  # version -> its code
        self._clock = 0  # ticks seen: a row's `used` is its last tick's number
        # Per row: tick count, last price, EWMA variance of log returns, the pending
        # forecast's point, lower, upper and version code (-1: nothing to score).
        self.state = np.zeros((0, 7))
        self.used = np.zeros(0, np.int64)
        self._grow(1024)

    def _grow(self, cap: int) -> None:
        n = len(self.state)
        state = np.full((cap, 7), math.nan)
        state[:, COUNT], state[:, PENDING] = 0.0, -1.0
        state[:n] = self.state
        used = np.zeros(cap, np.int64)
        used[:n] = self.used
        self.state, self.used = state, used
        self._free.extend(range(cap - 1, n - 1, -1))

    def __len__(self) -> int:
        return len(self._row)

    def forget(self, symbols: Sequence[str]) -> None:
        """Drop these symbols' state (they start over: count, variance, pending forecast)."""
        rows = [r for s in symbols if (r := self._row.pop(s, None)) is not None]
        self._release(np.asarray(rows, np.int64))

    def _release(self, rows: np.ndarray) -> None:
        self.state[rows] = [0.0, *[math.nan] * 5, -1.0]
        self._free.extend(rows.tolist())

    def _rows(self, symbols: Sequence[str]) -> np.ndarray:
        """Each symbol's row, new symbols given free ones."""
        row, out = self._row, np.empty(len(symbols), np.int64)
        for i, s in enumerate(symbols):
            r = row.get(s)
            if r is None:
                if not self._free:
                    self._grow(2 * len(self.state))
                r = row[s] = self._free.pop()
            out[i] = r
        return out

    def _code(self, version: str) -> int:
        code = self._codes.get(version)
        if code is None:
            code = self._codes[version] = len(self._versions)
            self._versions.append(version)
        return code

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
        symbol's tick order; returns the forecasts these ticks resolve, in input order.

        A forecast that is NaN, `warming`, or made before its symbol's `window`-th tick is
        not scored (its tick still advances the symbol's count and variance). A tick whose
        price is not positive and finite changes nothing (the engine rejects those).
        """
        n = len(symbols)
        if n == 0:
            return _resolve([], np.zeros((0, 6)))
        rows = self._rows(symbols)
        if isinstance(version, str):
            code = np.full(n, self._code(version), np.float64)
        else:
            code = np.asarray([self._code(v) for v in version], np.float64)
        y = np.asarray(price, np.float64)
        cols = np.column_stack([y, point, lower, upper, code]).astype(np.float64, copy=False)
        warm = np.zeros(n, bool) if warming is None else np.asarray(warming, bool)
        np.maximum.at(self.used, rows, self._clock + np.arange(n))  # a symbol's last tick
        self._clock += n
        if len(set(symbols)) == n:  # the usual batch: one tick per symbol, one round
            rank = np.zeros(n, np.int64)
        else:  # the k-th tick of each symbol goes in round k
            order = np.argsort(rows, kind="stable")
            head = np.ones(n, bool)
            head[1:] = rows[order][1:] != rows[order][:-1]
            rank = np.empty(n, np.int64)
            rank[order] = np.arange(n) - np.maximum.accumulate(np.where(head, np.arange(n), 0))
        # Rounds shrink as k grows; from the first under MIN_ROUND ticks on, one by one.
        sizes = np.bincount(rank)
        top = int(np.argmax(sizes < MIN_ROUND)) if (sizes < MIN_ROUND).any() else len(sizes)
        rounds = (
            [np.arange(n)]
            if top == 1 and len(sizes) == 1
            else [np.flatnonzero(rank == k) for k in range(top)]
        )
        rest = np.flatnonzero(rank >= top)
        done = []
        with np.errstate(invalid="ignore", divide="ignore"):
            for i in rounds:
                i = i[(y[i] > 0) & np.isfinite(y[i])]
                done.append(self._round(i, rows[i], cols[i], warm[i]))
        if len(rest):
            done.append(self._one_by_one(rest, rows, cols, warm))
        if len(self._row) > self.max_symbols:  # down to 90%: a full scan every 10% of churn
            self._evict(len(self._row) - self.max_symbols + self.max_symbols // 10)
        return self._resolved(done)

    def _one_by_one(
        self, idx: np.ndarray, rows: np.ndarray, cols: np.ndarray, warm: np.ndarray
    ) -> Any:
        """`_round`'s rules one tick at a time, in input order, on plain floats: for
        rounds too small for numpy to pay (a one-symbol stream would otherwise make a round
        of every tick)."""
        floor, w = 1.0 - self.lam, self.window  # the gain: max(1 / count, 1 - lam)
        out_i: list[int] = []
        out_st: list[list[float]] = []
        out_y: list[float] = []
        held: dict[int, list[float]] = {}  # row -> its state, written back at the end
        rows_l = rows[idx].tolist()
        for i, r, (y, f, lo, hi, code), wm in zip(
            idx.tolist(), rows_l, cols[idx].tolist(), warm[idx].tolist(), strict=True
        ):
            if not (y > 0 and math.isfinite(y)):
                continue
            st = held.get(r)
            if st is None:
                st = held[r] = self.state[r].tolist()
            count, last, var = st[COUNT], st[LAST], st[VAR]
            if st[PENDING] >= 0:
                out_i.append(i)
                out_st.append(st.copy())
                out_y.append(y)
            if count >= 1:
                ret = math.log(y / last)
                if count == 1:
                    var = ret * ret
                else:
                    gain = 1.0 / count
                    var += (gain if gain > floor else floor) * (ret * ret - var)
            count += 1
            ok = count >= w and not wm and f > 0 and lo > 0 and hi > 0 and var >= 0
            st[:] = (count, y, var, f, lo, hi, code if ok else -1.0)
        for r, st in held.items():
            self.state[r] = st
        return (np.asarray(out_i, np.int64), np.asarray(out_st, np.float64).reshape(-1, 7),
                np.asarray(out_y, np.float64))  # fmt: skip

    def _round(self, i: np.ndarray, r: np.ndarray, c: np.ndarray, warm: np.ndarray) -> Any:
        """Fold one tick of each of the distinct rows `r` (`c [m, 5]`: price, point, lower,
        upper, version code); returns the forecasts they resolve as (input index, state rows
        `[k, 7]` as they were, prices `[k]`)."""
        st = self.state[r]
        count, var, y = st[:, COUNT], st[:, VAR], c[:, 0]
        due = st[:, PENDING] >= 0
        ret2 = np.log(y / st[:, LAST]) ** 2
        gain = np.maximum(1.0 / np.maximum(count, 1.0), 1.0 - self.lam)
        var = np.where(count == 1, ret2, np.where(count >= 2, var + gain * (ret2 - var), var))
        count = count + 1
        f, lo, hi = c[:, 1], c[:, 2], c[:, 3]
        ok = (count >= self.window) & ~warm & (f > 0) & (lo > 0) & (hi > 0) & (var >= 0)
        self.state[r] = np.column_stack([count, y, var, f, lo, hi, np.where(ok, c[:, 4], -1.0)])
        return i[due], st[due], y[due]

    def _evict(self, k: int) -> None:
        """Drop the `k` least recently updated symbols."""
        syms = list(self._row)
        rows = np.fromiter(self._row.values(), np.int64, len(syms))
        gone = np.argpartition(self.used[rows], k - 1)[:k]
        for j in gone.tolist():
            del self._row[syms[j]]
        self._release(rows[gone])

    def _resolved(self, done: list[Any]) -> Resolved:
        if len(done) == 1:
            i, st, y = done[0]
        else:
            i, st, y = (np.concatenate(x) for x in zip(*done, strict=True))
            order = np.argsort(i, kind="stable")  # input order
            st, y = st[order], y[order]
        version = [self._versions[int(c)] for c in st[:, PENDING].tolist()]
        cols = (y, st[:, LAST], st[:, POINT], st[:, LOWER], st[:, UPPER], st[:, VAR])
        return _resolve(version, np.stack(cols, axis=1))


def _resolve(version: list[str], a: np.ndarray) -> Resolved:
    """`a [n, 6]`: y, last price, point, lower, upper (prices) and the EWMA variance."""
    if not version:
        z = np.zeros(0)
        return Resolved([], z, z, z.astype(bool), z, z, z.astype(bool), z, z)
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
