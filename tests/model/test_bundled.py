"""Acceptance on the real bundled series: the shipped models, and one model trained from scratch.

These are the project's quality claims, checked on every CI run:
* electricity load: the carried-state model beats persistence and AR(60) on RMSE;
* daily prices: within 1% of persistence RMSE (a clearly better result would mean look-ahead)
  and the 90% interval covers 87-93% of the test split.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from model import checkpoint, data
from model.config import ModelConfig, TrainConfig
from model.evaluate import evaluate
from model.features import auto_features
from model.train import fit, training_part

BUNDLED = Path(__file__).resolve().parents[2] / "model" / "bundled"
PRICES = ("msft", "stocks", "sp500", "nasdaq")


def _report(name: str) -> dict:
    pred = checkpoint.load(BUNDLED / name)
    return evaluate(data.load(name), pred.params, pred.config, pred.stats, TrainConfig()).report


@pytest.mark.heavy
def test_bundled_model_beats_persistence_and_ar60_on_electricity_load():
    rep = _report("taylor")
    rmse = rep["model"]["stateful"]["rmse"]
    assert rmse < rep["persistence"]["rmse"]
    assert rmse < rep["ar60"]["rmse"]
    assert rep["model"]["window"]["rmse"] < rep["persistence"]["rmse"]


@pytest.mark.heavy
@pytest.mark.parametrize("name", PRICES)
def test_bundled_model_on_daily_prices_is_honest(name):
    rep = _report(name)
    ratio = rep["model"]["stateful"]["rmse"] / rep["persistence"]["rmse"]
    assert 0.99 <= ratio <= 1.01, f"{name}: {ratio:.4f}x persistence"
    assert 0.87 <= rep["model"]["stateful"]["coverage90"] <= 0.93
    assert 0.40 <= rep["model"]["stateful"]["directional_accuracy"] <= 0.60


@pytest.mark.slow
def test_default_training_from_scratch_reproduces_the_electricity_result():
    """`tickcast train --data taylor` with every default, in-process: minutes on 2 cores."""
    series = data.load("taylor")
    tc = TrainConfig(progress=False)
    config = ModelConfig(features=auto_features(training_part(series, tc)))
    result = fit(series, config, tc)
    rep = evaluate(series, result.model.params(), config, result.stats, tc).report
    assert rep["model"]["stateful"]["rmse"] < rep["ar60"]["rmse"] < rep["persistence"]["rmse"]
