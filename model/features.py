"""Stream-safe input features and the scaling stored with the model.

A tick's features are a function of that tick and the symbol's last `window` prices only
(the rolling buffer the live engine keeps anyway), with statistics fitted on the training
split and then frozen. `history_features` is that function; the offline path
(`featurize`) calls it on sliding windows of a whole series and the server calls it on its
ring buffer, so both compute the same numbers. The tutorial min-max scaled the raw price:
that leaks the future's range into the past, and live prices leave any fitted range (35%
of MSFT's test prices lie above its training maximum). Returns and window-relative levels
with stored scales have neither problem.

Features (`ModelConfig.features`):
  ret      log return of the last tick, standardized
  dlogvol  change of log(1 + volume), standardized
  lvl      log price minus its mean over the window, standardized (where in its recent range)
  lags     the last window-1 log returns, standardized; they bypass the LSTM and feed only
           the model's linear path (an autoregressive "highway", as in LSTNet), which
           carries a series with strong linear structure (a load curve) while the LSTM
           models what is left
  tod/dow  time of day / day of week (UTC) as sin and cos

Before a symbol has `window` ticks its history is padded with its first price (zero
returns), online and offline alike.

The model predicts the next standardized log return z; `to_price` turns (mean, scale) of
z into a price forecast and a central interval in the series' own units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from model.config import ModelConfig
from model.data import Series

__all__ = [
    "FeatureStats",
    "auto_features",
    "featurize",
    "fit_stats",
    "history_features",
    "max_autocorrelation",
    "targets",
    "to_price",
]

CLIP = 10.0  # standardized inputs are clipped to ±CLIP so one wild tick cannot blow up state
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
Z90 = 1.6448536269514722  # standard normal 95th percentile: central 90% interval
MIN_ACF = 0.3  # `auto` adds `lags` only where the returns' autocorrelation gets this strong
MIN_STEP_FALLBACK = 1e-4  # relative increment of a series that never moved (one basis point)


@dataclass(frozen=True)
class FeatureStats:
    """Scaling fitted on the training split; saved in the checkpoint's metadata."""

    ret_mean: float  # mean log return
    ret_std: float  # std of log return
    vol_mean: float = 0.0  # mean change of log(1 + volume)
    vol_std: float = 1.0  # std of that change
    lvl_std: float = 1.0  # std of the window-relative log level
    interval_scale: float = 1.0  # multiplies the predicted scale so validation covers 90%
    # One price increment as a log return (median over the training symbols of the smallest
    # price change seen / the lowest price; MIN_STEP_FALLBACK for a constant series). It
    # floors ret_std and lvl_std, and every interval spans at least one increment each way
    # from the last price. 0 in checkpoints from before it existed: no floor.
    min_step: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _log_returns(price: np.ndarray) -> np.ndarray:
    """`[time - 1]` log returns."""
    return np.diff(np.log(price))


def max_autocorrelation(train: list[Series], window: int) -> float:
    """Largest |autocorrelation| of the training returns at lags 1 .. window-1, pooled over
    symbols (0 when no series is long enough to tell)."""
    rs = [r - r.mean() for r in (_log_returns(s.price) for s in train if len(s) > 4 * window)]
    if not rs:
        return 0.0
    den = sum(float(np.dot(r, r)) for r in rs)
    acf = [
        sum(float(np.dot(r[k:], r[:-k])) for r in rs) / max(den, 1e-300) for k in range(1, window)
    ]
    return float(np.max(np.abs(acf))) if acf else 0.0


def auto_features(series: list[Series], window: int = 60) -> tuple[str, ...]:
    """Default feature set for a data set.

    Returns and the window-relative level always; volume if every row has one; time of day
    and week for intraday data; the linear lag path where the training returns are clearly
    autocorrelated (|acf| >= MIN_ACF), which prices are not (their acf stays near 0).
    """
    feats = ["ret", "lvl"]
    if all(s.volume is not None and np.all(s.volume > 0) for s in series):
        feats.append("dlogvol")
    spacing = np.median(np.concatenate([np.diff(s.ts) for s in series if len(s) > 1]))
    if spacing < DAY_MS:
        feats += ["tod", "dow"]
    if max_autocorrelation(series, window) >= MIN_ACF:
        feats.append("lags")
    return tuple(feats)


def _histories(price: np.ndarray, window: int) -> np.ndarray:
    """`[time, window]`: for each tick, the last `window` prices (oldest first), padded with
    the first price before the series has that many."""
    padded = np.concatenate([np.full(window - 1, price[0]), price])
    return np.lib.stride_tricks.sliding_window_view(padded, window)


def history_features(
    config: ModelConfig,
    stats: FeatureStats,
    ts_ms: np.ndarray,
    prices: np.ndarray,
    volume: np.ndarray | None = None,
    prev_volume: np.ndarray | None = None,
) -> np.ndarray:
    """Features of ticks from their recent history, vectorized over ticks.

    Args:
      ts_ms: the ticks' times, epoch ms `[n]`.
      prices: the last `config.window` prices of each tick's symbol, oldest first, the
        tick's own price last `[n, window]` (> 0; padded with the first price at the start).
      volume, prev_volume: the tick's and the previous tick's volume `[n]`, or None.

    Returns:
      `[n, features]` float32, columns in `config.features` order.
    """
    logp = np.log(prices)
    cols: list[np.ndarray] = []
    for name in config.features:
        if name == "ret":
            r = logp[:, -1] - logp[:, -2]
            cols.append(np.clip((r - stats.ret_mean) / stats.ret_std, -CLIP, CLIP))
        elif name == "dlogvol":
            if volume is None or prev_volume is None:
                d = np.zeros(len(prices))
            else:
                d = np.log1p(volume) - np.log1p(prev_volume)
            cols.append(np.clip((d - stats.vol_mean) / stats.vol_std, -CLIP, CLIP))
        elif name == "lvl":
            lv = (logp[:, -1] - logp.mean(axis=1)) / stats.lvl_std
            cols.append(np.clip(lv, -CLIP, CLIP))
        elif name == "lags":  # [n, window - 1], newest first; always the last columns
            r = logp[:, :0:-1] - logp[:, -2::-1]
            lags = np.clip((r - stats.ret_mean) / stats.ret_std, -CLIP, CLIP)
            cols += list(lags.T)
        elif name == "tod":
            a = 2 * np.pi * (np.asarray(ts_ms) % DAY_MS) / DAY_MS
            cols += [np.sin(a), np.cos(a)]
        elif name == "dow":
            # 1970-01-01 was a Thursday; the phase does not matter, only its consistency.
            a = 2 * np.pi * (np.asarray(ts_ms) % WEEK_MS) / WEEK_MS
            cols += [np.sin(a), np.cos(a)]
    return np.stack(cols, axis=-1).astype(np.float32)


def volume_pairs(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(now, previous)` volume of each tick `[time]` as the live engine sees them: a
    missing (NaN) volume repeats the last known one, and a tick where either is still
    unknown gets 0 for both (no change)."""
    v = np.asarray(volume, np.float64)
    gaps = np.isnan(v)
    if gaps.any():
        idx = np.where(gaps, 0, np.arange(len(v)))
        np.maximum.accumulate(idx, out=idx)
        v = v[idx]
    prev = np.concatenate([v[:1], v[:-1]])
    unknown = np.isnan(v) | np.isnan(prev)
    return np.where(unknown, 0.0, v), np.where(unknown, 0.0, prev)


def featurize(config: ModelConfig, stats: FeatureStats, s: Series) -> np.ndarray:
    """All rows of a series `[time, features]`; row t uses ticks t-window+1 .. t only."""
    v_now, v_prev = (None, None) if s.volume is None else volume_pairs(s.volume)
    return history_features(config, stats, s.ts, _histories(s.price, config.window), v_now, v_prev)


def price_step(series: list[Series]) -> float:
    """One price increment as a log return: per symbol, the smallest non-zero price change
    divided by the symbol's lowest price (where one increment is the largest move, so the
    floor spans an increment anywhere in the range); the median over symbols
    (`MIN_STEP_FALLBACK` for a symbol that never moved)."""
    rel = []
    for s in series:
        d = np.abs(np.diff(s.price))
        d = d[d > 0]
        rel.append(float(d.min() / np.min(s.price)) if len(d) else MIN_STEP_FALLBACK)
    return float(np.log1p(np.median(rel))) if rel else 0.0


def fit_stats(train: list[Series], window: int = 60) -> FeatureStats:
    """Fit scaling on training-split series only. Spreads are floored at one price
    increment (`price_step`), so a constant or nearly constant series scales sanely."""
    r = np.concatenate([_log_returns(s.price) for s in train])
    if len(r) < 2:
        raise ValueError("need at least 3 training rows to fit feature statistics")
    dv = np.concatenate(
        [
            np.subtract(*np.log1p(volume_pairs(s.volume)))[1:]
            if s.volume is not None
            else np.zeros(len(s) - 1)
            for s in train
        ]
    )
    lv = np.concatenate(
        [np.log(s.price) - np.log(_histories(s.price, window)).mean(axis=1) for s in train]
    )
    step = price_step(train)
    return FeatureStats(
        ret_mean=float(r.mean()),
        ret_std=float(max(r.std(), step, 1e-8)),
        vol_mean=float(dv.mean()),
        vol_std=float(max(dv.std(), 1e-8)),
        lvl_std=float(max(lv.std(), step, 1e-8)),
        min_step=step,
    )


def targets(stats: FeatureStats, s: Series) -> np.ndarray:
    """`[time]` float32: target[t] is the standardized return from t to t+1 (NaN at the end)."""
    z = np.full(len(s), np.nan)
    z[:-1] = (_log_returns(s.price) - stats.ret_mean) / stats.ret_std
    return z.astype(np.float32)


def to_price(
    stats: FeatureStats, price_now: np.ndarray, mean: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn a forecast of the next standardized return into price units.

    Args:
      price_now: the last price `[n]`; mean, scale: the model's output `[n]`.

    Returns:
      (point forecast, lower, upper) `[n]` each, float64: the median of the implied
      log-normal and its central 90% interval (scale widened by `stats.interval_scale`),
      spanning at least one price increment (`stats.min_step`) each way from the last price.
    """
    p = np.asarray(price_now, np.float64)
    mu = np.asarray(mean, np.float64) * stats.ret_std + stats.ret_mean
    half = Z90 * stats.interval_scale * np.asarray(scale, np.float64) * stats.ret_std
    lo, hi = p * np.exp(mu - half), p * np.exp(mu + half)
    if stats.min_step > 0:
        inc = np.expm1(stats.min_step) * (1 + 1e-6)  # relative; the increment falls inside
        lo, hi = np.minimum(lo, p * (1 - inc)), np.maximum(hi, p * (1 + inc))
    return p * np.exp(mu), lo, hi
