from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

from model import data
from model.config import ModelConfig, TrainConfig
from model.data import synthetic
from model.evaluate import ar_forecasts, evaluate, metrics, plot
from model.features import featurize, fit_stats, to_price
from model.lstm import LSTMForecaster


@pytest.fixture
def untrained():
    cfg = ModelConfig(layers=2, units=16, window=20, features=("ret", "dlogvol", "tod", "dow"))
    series = synthetic(3, 600, seed=4, kind="random_walk")
    return cfg, series, LSTMForecaster(cfg, rngs=nnx.Rngs(1)).params(), fit_stats(series)


def _forecasts(ev):
    return {p.symbol: (p.ts, p.stateful, p.window, p.ar) for p in ev.per_symbol}


def test_changing_the_future_never_changes_past_forecasts(untrained):
    cfg, series, params, stats = untrained
    before = _forecasts(evaluate(series, params, cfg, stats))
    cut = series[0].ts[530]  # inside the test split
    changed = [
        dataclasses.replace(
            s,
            price=np.where(s.ts > cut, s.price * np.linspace(0.5, 2.0, len(s)), s.price),
            volume=np.where(s.ts > cut, s.volume * 7, s.volume),
        )
        for s in series
    ]
    after = _forecasts(evaluate(changed, params, cfg, stats))
    assert set(before) == {s.symbol for s in series}  # the loop below checks every symbol
    for sym, (ts, st, win, ar) in before.items():
        _, st2, win2, ar2 = after[sym]
        past = ts <= cut  # forecasts whose target is at or before the cut use only unchanged ticks
        assert past.sum() > 50 and (~past).sum() > 10
        np.testing.assert_array_equal(st[:, past], st2[:, past])
        np.testing.assert_array_equal(win[:, past], win2[:, past])
        np.testing.assert_array_equal(ar[past], ar2[past])
        assert not np.allclose(st[:, ~past], st2[:, ~past])


def test_stateful_equals_a_plain_carried_pass_and_window_equals_fresh_passes(untrained):
    cfg, series, params, stats = untrained
    ev = evaluate(series, params, cfg, stats)
    p = ev.per_symbol[1]
    s = series[1]
    x = featurize(cfg, stats, s)
    rows = np.searchsorted(s.ts, p.ts) - 1
    model = LSTMForecaster(cfg, rngs=nnx.Rngs(0))
    from model.lstm import load_params_into

    load_params_into(model, params)
    out = np.asarray(model.forward(x[None, rows[0] - cfg.window + 1 : rows[-1] + 1]))[
        0, cfg.window - 1 :
    ]
    np.testing.assert_allclose(
        to_price(stats, p.last, out[:, 0], out[:, 1])[0], p.stateful[0], rtol=1e-5
    )
    k = 37
    win = np.asarray(model.forward(x[None, rows[k] - cfg.window + 1 : rows[k] + 1]))[0, -1]
    np.testing.assert_allclose(
        to_price(stats, p.last[k : k + 1], win[:1], win[1:])[0], p.window[0, k], rtol=1e-5
    )
    assert not np.allclose(p.stateful[0], p.window[0]), (
        "after the first forecast the two paths differ"
    )
    np.testing.assert_allclose(p.stateful[:, 0], p.window[:, 0], rtol=1e-6)


def test_a_short_symbol_is_skipped_not_fatal(untrained):
    cfg, series, params, stats = untrained
    s0, tail = series[0], slice(-150, None)
    young = dataclasses.replace(
        s0, symbol="NEW", ts=s0.ts[tail], price=s0.price[tail], volume=s0.volume[tail]
    )
    rep = evaluate([*series, young], params, cfg, stats).report
    assert rep["skipped_symbols"] == ["NEW"]
    assert set(rep["per_symbol"]) == {s.symbol for s in series}


def test_metrics_by_hand():
    last = np.array([10.0, 10.0, 10.0, 10.0])
    actual = np.array([11.0, 9.0, 10.0, 12.0])
    pred = np.array([10.5, 10.5, 10.0, 11.0])
    m = metrics(pred, last, actual, np.full(4, 2.0), lo=pred - 1, hi=pred + 1)
    assert np.isclose(m["rmse"], np.sqrt((0.25 + 2.25 + 0 + 1) / 4))
    assert np.isclose(m["mae"], (0.5 + 1.5 + 0 + 1) / 4)
    assert np.isclose(m["mase"], m["mae"] / 2)
    assert np.isclose(m["directional_accuracy"], (1 + 0 + 0.5 + 1) / 4)
    assert np.isclose(m["coverage90"], 3 / 4)


def test_ar_recovers_a_known_process():
    rng = np.random.default_rng(0)
    y = np.zeros(3000)
    for t in range(2, 3000):
        y[t] = 5 + 0.6 * y[t - 1] - 0.3 * y[t - 2] + rng.normal()
    pred = ar_forecasts(y, 2500, np.arange(2500, 2999), order=2)
    true = 5 + 0.6 * y[2500:2999] - 0.3 * y[2499:2998]
    assert np.max(np.abs(pred - true)) < 0.2


@pytest.mark.parametrize(
    ("name", "persistence", "ar60"),
    [("msft", 0.5800, 0.5946), ("taylor", 905.0, 238.1), ("sp500", 19.98, 20.16)],
)
def test_baselines_reproduce_the_published_numbers(name, persistence, ar60):
    """DATA.md's baselines (80/20 split) are reproduced by our evaluation code to 0.1%."""
    series = data.load(name)
    cfg = ModelConfig(layers=1, units=4)
    params = LSTMForecaster(cfg, rngs=nnx.Rngs(0)).params()
    rep = evaluate(series, params, cfg, fit_stats(series), TrainConfig()).report
    assert rep["persistence"]["rmse"] == pytest.approx(persistence, rel=2e-3)
    assert rep["ar60"]["rmse"] == pytest.approx(ar60, rel=2e-3)
    assert rep["persistence"]["directional_accuracy"] == 0.5
    json.dumps(rep)


def test_plot_writes_a_png(untrained, tmp_path):
    cfg, series, params, stats = untrained
    out = tmp_path / "p.png"
    plot(evaluate(series, params, cfg, stats), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_scale_free_quality_and_the_ewma_random_walk_in_the_report(untrained):
    cfg, series, params, stats = untrained
    rep = evaluate(series, params, cfg, stats).report
    q = rep["quality"]
    assert q["n"] == rep["n_test"]
    assert rep["interval_score_vs_ewma_rw"] == q["interval_score_ratio"]
    # Same outcomes, same coverage definition: the price-unit and log figures agree.
    assert rep["ewma_rw"]["coverage90"] == pytest.approx(q["ewma_rw"]["coverage90"])
    assert rep["model"]["stateful"]["coverage90"] == pytest.approx(q["coverage90"])
    assert 0.5 < rep["ewma_rw"]["coverage90"] <= 1.0
    assert rep["ewma_rw"]["rmse"] == rep["persistence"]["rmse"]
    # Every symbol scaled by its own factor: the pooled scale-free figures do not move.
    scaled = [dataclasses.replace(s, price=s.price * 10.0 ** (4 * k)) for k, s in enumerate(series)]
    q2 = evaluate(scaled, params, cfg, stats).report["quality"]
    for k in ("error_ratio", "coverage90", "interval_score_ratio"):
        assert q2[k] == pytest.approx(q[k], rel=1e-4), k
