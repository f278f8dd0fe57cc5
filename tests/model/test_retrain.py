"""Champion/challenger retraining on the drift series: regime one trains the champion,
regime two is what the challenger is fine-tuned and scored on."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from model.checkpoint import LoadedModel
from model.config import ModelConfig, TrainConfig
from model.data import Series, synthetic
from model.features import FeatureStats
from model.lstm import LSTMForecaster
from model.quality import Quality
from model.registry import Registry
from model.retrain import (
    RetrainConfig,
    decide,
    decide_scale_free,
    min_ticks,
    prune,
    retrain,
    save_challenger,
)
from model.retrain_report import format_summary, plot
from model.train import Init, fit

CONFIG = ModelConfig(layers=2, units=8, dropout=0.1, window=12, features=("ret", "dlogvol"))
TRAIN = TrainConfig(
    max_steps=150, eval_every=25, batch_size=8, chunks=3, progress=False, max_seconds=None,
    learning_rate=5e-3,
)  # fmt: skip
N, HALF = 1000, 500


def cut(series: list[Series], lo: int, hi: int) -> list[Series]:
    return [
        dataclasses.replace(s, ts=s.ts[lo:hi], price=s.price[lo:hi],
                            volume=None if s.volume is None else s.volume[lo:hi])
        for s in series
    ]  # fmt: skip


@pytest.fixture(scope="module")
def drift() -> list[Series]:
    return synthetic(3, N, seed=0, kind="drift")


@pytest.fixture(scope="module")
def champion(drift) -> LoadedModel:
    r = fit(cut(drift, 0, HALF), CONFIG, dataclasses.replace(TRAIN, learning_rate=1e-2))
    return LoadedModel(r.model, CONFIG, r.stats, {"version": "champion-v1"})


@pytest.fixture(scope="module")
def promoted(drift, champion):
    rc = RetrainConfig(margin=0.01, train=TRAIN)
    return retrain(cut(drift, HALF, N), champion, rc)


def _lag1(r: np.ndarray) -> float:
    r = r - r.mean()
    return float(np.dot(r[1:], r[:-1]) / np.dot(r, r))


def test_drift_switches_regime_at_half():
    for s in synthetic(2, 2000, seed=3, kind="drift"):
        r = np.diff(np.log(s.price))
        assert _lag1(r[:990]) > 0.45 and _lag1(r[1010:]) < -0.45
        assert s.volume is not None and np.all(s.volume > 0)


@pytest.mark.heavy  # fits a champion (module fixture)
def test_challenger_fine_tuned_on_the_new_regime_is_promoted(promoted, champion):
    a = promoted
    assert a.outcome == "promoted", format_summary(a)
    sc = {k: v["rmse"] for k, v in a.scores.items()}
    assert sc["challenger"] < 0.9 * sc["champion"]
    assert sc["challenger"] < sc["persistence"] < sc["champion"]  # regime one's model is stale
    assert a.n_eval > 200 and a.symbols == ["S000", "S001", "S002"]
    assert "better" in a.reason and a.improvement is not None and a.improvement > 0.1
    # Fine-tuning keeps the config and the feature statistics (only the interval is
    # recalibrated), so the serving features stay the same.
    assert a.challenger is not None
    assert a.challenger.model.config == champion.config
    keep = dataclasses.replace(a.challenger.stats, interval_scale=champion.stats.interval_scale)
    assert keep == champion.stats
    assert 0.7 <= a.scores["challenger"]["coverage90"] <= 1.0
    # The decision is on the scale-free pooled scores, each reported; the EWMA random walk
    # stands beside persistence and AR(60).
    ch, cp = a.scores["challenger"], a.scores["champion"]
    assert ch["error_ratio"] < 0.9 < 1.0 < cp["error_ratio"]
    assert a.improvement == pytest.approx(1 - ch["error_ratio"] / cp["error_ratio"])
    assert "error ratio to persistence" in a.reason
    assert ch["interval_score_ratio"] > 0 and cp["interval_score_ratio"] > 0
    assert a.scores["ewma_rw"]["rmse"] == a.scores["persistence"]["rmse"]
    assert 0.5 <= a.scores["ewma_rw"]["coverage90"] <= 1.0
    summary = format_summary(a)
    assert "random walk, EWMA vol" in summary and "int.score" in summary


@pytest.mark.heavy  # fits a champion (module fixture)
def test_no_better_challenger_is_rejected(drift, champion, promoted):
    # A margin no challenger reaches, on the error ratio nor (within it) the interval score.
    rc = RetrainConfig(margin=0.9, train=TRAIN)
    a = retrain(cut(drift, HALF, N), champion, rc)
    assert a.outcome == "rejected" and "margin 90.00%" in a.reason, a.reason
    assert a.scores["challenger"]["rmse"] == pytest.approx(promoted.scores["challenger"]["rmse"])
    assert decide(1.0, 1.0, 0.01)[0] is False and decide(1.0, 1.2, 0.0)[0] is False
    assert decide(1.0, 0.98, 0.01)[0] is True and decide(1.0, 0.995, 0.01)[0] is False


def test_decide_scale_free_error_first_then_interval() -> None:
    def q(sq_model: float, score: float) -> Quality:
        return Quality(n=100, sq_model=sq_model, sq_persistence=1.0, score_model=score,
                       score_rw=10.0)  # fmt: skip

    # Error ratio 1.0 -> 0.9 (10% better): promoted whatever the interval.
    assert decide_scale_free(q(1.0, 9.0), q(0.81, 12.0), 0.01)[0] is True
    # 10% worse: rejected even with a much better interval.
    assert decide_scale_free(q(1.0, 9.0), q(1.21, 5.0), 0.01)[0] is False
    # Within the margin (0.5% better): the interval score decides.
    ok, why = decide_scale_free(q(1.0, 9.0), q(0.99, 8.0), 0.01)
    assert ok and "interval score" in why and "11.11% better" in why
    assert decide_scale_free(q(1.0, 9.0), q(0.99, 8.99), 0.01)[0] is False
    assert decide_scale_free(q(1.0, 9.0), Quality(), 0.01)[0] is False


@pytest.mark.heavy  # fits a champion (module fixture)
def test_challenger_never_sees_the_evaluation_slice(drift, champion):
    """Changing every price of the evaluation slice changes no challenger weight."""
    data = cut(drift, HALF, N)
    rc = RetrainConfig(train=dataclasses.replace(TRAIN, max_steps=50))
    tc = rc.train_config()
    init = Init(champion.params, champion.stats)
    a = fit(data, CONFIG, tc, init=init)
    start = a.split.test_start
    changed = []
    for s in data:
        k = int(np.searchsorted(s.ts, start))
        changed.append(dataclasses.replace(s, price=np.r_[s.price[:k], s.price[k:] * 1.5]))
    b = fit(changed, CONFIG, tc, init=init)
    assert b.split == a.split and b.stats == a.stats and a.steps > 0
    for x, y in zip(jax.tree.leaves(a.model.params()), jax.tree.leaves(b.model.params()),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.heavy  # fits a champion (module fixture)
def test_fine_tune_with_no_steps_returns_the_champion(drift, champion):
    tc = dataclasses.replace(RetrainConfig().train_config(), max_steps=0, progress=False)
    r = fit(cut(drift, HALF, N), CONFIG, tc, init=Init(champion.params, champion.stats))
    assert r.steps == 0
    for x, y in zip(jax.tree.leaves(r.model.params()), jax.tree.leaves(champion.params),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    other = ModelConfig(layers=1, units=8, dropout=0.1, window=12, features=("ret", "dlogvol"))
    with pytest.raises(ValueError, match="champion's own config"):
        fit(cut(drift, HALF, N), other, tc, init=Init(champion.params, champion.stats))


@pytest.mark.heavy  # fits a champion (module fixture)
def test_too_little_data_is_skipped(drift, champion):
    rc = RetrainConfig(train=TRAIN)
    need = min_ticks(CONFIG, rc)
    a = retrain(cut(drift, 0, need - 1), champion, rc)
    assert a.outcome == "skipped" and "not enough data" in a.reason
    assert a.dropped_symbols == ["S000", "S001", "S002"] and a.challenger is None
    assert retrain([], champion, rc).reason == "not enough data: no ticks in the range read"
    assert "SKIPPED" in format_summary(a)


@pytest.mark.heavy  # fits a champion (module fixture)
def test_registry_bookkeeping_and_plot(tmp_path, promoted):
    reg = Registry(tmp_path / "reg")
    rc = RetrainConfig(train=TRAIN)
    v = save_challenger(reg, promoted, "A1", "test", rc)
    assert v is not None
    meta = reg.load(v).metadata
    assert (
        meta["parent"] == "champion-v1" and meta["data"]["test_start_ms"] == promoted.eval_start_ms
    )
    assert meta["scores"]["challenger"] == pytest.approx(promoted.scores["challenger"]["rmse"])
    assert plot(promoted, str(tmp_path / "p.png")) and (tmp_path / "p.png").stat().st_size > 10_000
    # prune: the champion and history stay, rejected versions beyond `keep` go, oldest first.
    stats = FeatureStats(0.0, 0.01)
    others = [reg.add(LSTMForecaster(CONFIG, rngs=nnx.Rngs(s)), stats) for s in range(4)]
    reg.promote(others[0], "seed")
    reg.promote(v, "retrain")
    removed = prune(reg, keep=1)
    assert removed == others[1:3]
    assert {m["version"] for m in reg.versions()} == {v, others[0], others[3]}
