from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from model.data import synthetic
from model.evaluate import evaluate
from model.train import fit, prepare


@pytest.mark.heavy
def test_training_is_seeded_and_reproducible(tiny_config, tiny_train):
    series = synthetic(2, 400, seed=0)
    a = fit(series, tiny_config, tiny_train)
    b = fit(series, tiny_config, tiny_train)
    for x, y in zip(
        jax.tree.leaves(a.model.params()), jax.tree.leaves(b.model.params()), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.stats == b.stats and a.steps == b.steps == tiny_train.max_steps
    c = fit(series, tiny_config, dataclasses.replace(tiny_train, seed=1))
    assert not np.array_equal(
        np.asarray(c.model.params().head_bias), np.asarray(a.model.params().head_bias)
    )


@pytest.mark.heavy
def test_learns_a_seasonal_series_and_beats_persistence(tiny_config, tiny_train):
    series = synthetic(3, 1500, seed=1, kind="seasonal", period=48)
    tc = dataclasses.replace(tiny_train, max_steps=400, eval_every=50)
    result = fit(series, tiny_config, tc)
    assert result.history[-1]["val_nll"] < result.history[0]["val_nll"]
    ev = evaluate(series, result.model.params(), tiny_config, result.stats, tc)
    rep = ev.report
    assert rep["model"]["stateful"]["rmse"] < 0.9 * rep["persistence"]["rmse"]
    assert 0.75 <= rep["model"]["stateful"]["coverage90"] <= 0.98


@pytest.mark.heavy
def test_mse_loss_trains_and_keeps_an_interval(tiny_config, tiny_train):
    series = synthetic(1, 400, seed=2)
    result = fit(series, tiny_config, dataclasses.replace(tiny_train, loss="mse"))
    assert np.isfinite(result.best_val_loss) and result.stats.interval_scale > 0


def test_statistics_come_from_the_training_split_only(tiny_config, tiny_train):
    series = synthetic(1, 500, seed=3)
    prep = prepare(series, tiny_config, tiny_train)
    v, _ = prep.bounds[0]
    changed = [
        dataclasses.replace(series[0], price=np.r_[series[0].price[:v], series[0].price[v:] * 3])
    ]
    assert prepare(changed, tiny_config, tiny_train).stats == prep.stats
