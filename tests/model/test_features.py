from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np

from model.config import ModelConfig
from model.data import Series, synthetic
from model.features import (
    Z90,
    auto_features,
    featurize,
    fit_stats,
    history_features,
    max_autocorrelation,
    targets,
    to_price,
)

ALL = ("ret", "dlogvol", "lvl", "tod", "dow", "lags")


def test_features_computed_online_from_a_ring_buffer_equal_the_offline_rows():
    cfg = ModelConfig(window=20, features=ALL)
    (s,) = synthetic(1, 300, seed=1, period=12)
    stats = fit_stats([s], window=20)
    offline = featurize(cfg, stats, s)
    ring: deque[float] = deque(maxlen=cfg.window)  # what the live engine keeps per symbol
    prev_v = s.volume[0]
    for t in range(len(s)):
        if not ring:
            ring.extend([s.price[0]] * (cfg.window - 1))  # first tick: pad with its price
        ring.append(s.price[t])
        row = history_features(
            cfg, stats, np.array([s.ts[t]]), np.array([list(ring)]),
            np.array([s.volume[t]]), np.array([prev_v]),
        )  # fmt: skip
        np.testing.assert_allclose(row[0], offline[t], atol=1e-6)
        prev_v = s.volume[t]
    assert offline.shape == (300, cfg.n_features) and offline.dtype == np.float32


def test_row_t_depends_on_the_past_only():
    cfg = ModelConfig(window=20, features=ALL)
    (s,) = synthetic(1, 200, seed=2, period=12)
    stats = fit_stats([s], window=20)
    base = featurize(cfg, stats, s)
    changed = dataclasses.replace(s, price=np.r_[s.price[:120], s.price[120:] * 1.7])
    np.testing.assert_array_equal(featurize(cfg, stats, changed)[:120], base[:120])


def test_stats_depend_only_on_the_training_rows():
    (s,) = synthetic(1, 500, seed=2)
    train = dataclasses.replace(s, ts=s.ts[:300], price=s.price[:300], volume=s.volume[:300])
    stats = fit_stats([train])
    r = np.diff(np.log(s.price[:300]))
    assert np.isclose(stats.ret_mean, r.mean()) and np.isclose(stats.ret_std, r.std())
    assert stats.lvl_std > 0 and stats.vol_std > 0


def test_lag_columns_are_the_past_returns_newest_first():
    cfg = ModelConfig(window=6, features=("ret", "lags"))
    (s,) = synthetic(1, 50, seed=5)
    stats = fit_stats([s], window=6)
    x = featurize(cfg, stats, s)
    z = (np.diff(np.log(s.price)) - stats.ret_mean) / stats.ret_std
    t = 30
    np.testing.assert_allclose(x[t, 1:], z[t - 1 : t - 6 : -1], rtol=1e-5)  # r_t, r_{t-1}, ...
    np.testing.assert_allclose(x[t, 0], z[t - 1], rtol=1e-5)


def test_autocorrelation_separates_seasonal_series_from_random_walks():
    assert max_autocorrelation(synthetic(2, 2000, seed=0, period=24), 60) > 0.5
    assert max_autocorrelation(synthetic(2, 2000, seed=0, kind="random_walk"), 60) < 0.1


def test_targets_are_the_next_standardized_return():
    (s,) = synthetic(1, 50, seed=3)
    stats = fit_stats([s])
    y = targets(stats, s)
    assert np.isnan(y[-1])
    np.testing.assert_allclose(
        y[:-1], (np.log(s.price[1:] / s.price[:-1]) - stats.ret_mean) / stats.ret_std, rtol=1e-5
    )


def test_to_price_median_and_interval():
    stats = dataclasses.replace(fit_stats(synthetic(1, 100, seed=4)), interval_scale=1.5)
    p, lo, hi = to_price(stats, np.array([100.0]), np.array([0.5]), np.array([2.0]))
    mu = 0.5 * stats.ret_std + stats.ret_mean
    assert np.isclose(p[0], 100 * np.exp(mu))
    assert np.isclose(np.log(hi[0] / p[0]), Z90 * 1.5 * 2.0 * stats.ret_std)
    assert lo[0] < p[0] < hi[0]


def test_auto_features():
    daily = [
        Series(
            "A",
            np.arange(300) * 86_400_000,
            np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, 300))),
            None,
        )
    ]
    assert auto_features(daily) == ("ret", "lvl")
    assert auto_features(synthetic(1, 2000, period=48)) == (
        "ret",
        "lvl",
        "dlogvol",
        "tod",
        "dow",
        "lags",
    )
    walk = synthetic(1, 2000, kind="random_walk")
    assert auto_features(walk) == ("ret", "lvl", "dlogvol", "tod", "dow")


def test_wild_ticks_are_clipped():
    cfg = ModelConfig(window=3)
    stats = fit_stats(synthetic(1, 100, seed=4), window=3)
    x = history_features(cfg, stats, np.array([0]), np.array([[1.0, 1.0, 1e6]]))
    assert x[0, 0] == 10.0
