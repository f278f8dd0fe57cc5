"""Model hot swap in the engine, without Kafka: the new model's state is built beside the
serving one and brought up to date in rounds; after the swap each symbol's forecasts equal a
reference that re-warmed the new model on the symbol's buffer at the first round and carried
it through every later tick."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from model import data
from model.checkpoint import LoadedModel
from model.config import ModelConfig
from model.lstm import LSTMForecaster, load_params_into
from streamer.core.engine import Engine
from streamer.core.forecasts import Forecasts
from streamer.core.swap import buffer_features
from streamer.jobs.replay import interleave
from tests.streamer.core.test_engine import head, per_symbol, run

Tick = tuple[str, int, float, float | None]


def perturbed(pred: LoadedModel, version: str, seed: int = 1) -> LoadedModel:
    """Another model of the same config: other weights AND other feature statistics."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda a: np.asarray(a) * 1.05 + 0.02 * rng.standard_normal(np.shape(a)), pred.params
    )
    model = LSTMForecaster(pred.config, rngs=nnx.Rngs(0))
    load_params_into(model, params)
    stats = dataclasses.replace(pred.stats, ret_std=pred.stats.ret_std * 1.3)
    return LoadedModel(model, pred.config, stats, {**pred.metadata, "version": version})


def round_robin(series: list[data.Series]) -> list[Tick]:
    """Row i of every symbol, then row i + 1: each symbol ticks once per len(series) ticks."""
    n = min(len(s) for s in series)
    out: list[Tick] = []
    for i in range(n):
        for s in series:
            vol = None if s.volume is None else float(s.volume[i])
            out.append((s.symbol, int(s.ts[i]), float(s.price[i]), vol))
    return out


def versions(out: dict[str, list[Forecasts]]) -> set[str]:
    return {f.version for f in out.get("all", []) if len(f)}


@pytest.mark.parametrize("gaps", [(0, 0), (25, 3), (61, 1)])
def test_swap_equals_rewarm_at_the_first_round_then_carried(
    stocks: LoadedModel, gaps: tuple[int, int]
) -> None:
    """Ticks arrive between the rounds (`gaps` ticks per symbol before the second round and
    before the final one); the swap loses none and is exact."""
    new = perturbed(stocks, "B")
    series = head(data.load("stocks"), 400)
    ticks = round_robin(series)
    n_sym = len(series)
    cut0 = 150 * n_sym
    cut1 = cut0 + gaps[0] * n_sym
    cut2 = cut1 + gaps[1] * n_sym

    engine = Engine(stocks, max_symbols=8)
    run(engine, ticks[:cut0], seed=1)
    pending = engine.prepare_swap(new, engine.snapshot())
    during = run(engine, ticks[cut0:cut1], seed=2)
    pending.catch_up(engine.snapshot())
    during2 = run(engine, ticks[cut1:cut2], seed=3)
    old, caught = engine.finish_swap(pending)
    after = run(engine, ticks[cut2:], seed=4)
    assert old == stocks.version and engine.version == "B"
    assert versions(during) | versions(during2) <= {stocks.version}
    assert versions(after) == {"B"}
    assert caught == (n_sym if gaps[1] else 0)

    # Reference: the new model re-warmed on the same buffers at the first round, carried.
    ref = Engine(stocks, max_symbols=8)
    run(ref, ticks[:cut0], seed=1)
    ref.loaded, ref.stats, ref.version = new, new.stats, new.version
    ref.runtime = new.runtime(8, min_bucket=8)
    ref.rewarm(list(ref.slot_of.values()))
    ref_after = run(ref, ticks[cut0:], seed=5)
    got, want = per_symbol(after["all"]), per_symbol(ref_after["all"])
    for sym, g in got.items():
        w = want[sym][-len(g) :]
        np.testing.assert_array_equal(g[:, 4], w[:, 4])  # same ticks (seq)
        np.testing.assert_allclose(g[:, :3], w[:, :3], rtol=2e-5)
    # Every tick got exactly one forecast, across the swap.
    everything = [f for part in (during, during2, after) for f in part.get("all", [])]
    assert sum(len(f) for f in everything) == len(ticks) - cut0


def test_a_symbol_far_behind_or_new_is_warmed_from_its_buffer(stocks: LoadedModel) -> None:
    """More ticks than a buffer can replay (> history - window + 1), and a symbol first seen
    during the swap: both start from the new model warmed on their buffer at the final round."""
    new = perturbed(stocks, "B", seed=2)
    series = head(data.load("stocks"), 400)
    late = series.pop()  # appears only after the first round
    ticks = round_robin(series)
    n = len(series)
    cut0, cut1 = 100 * n, 200 * n  # 100 ticks per symbol between the rounds: too many
    late_ticks = round_robin([late])[:20]

    engine = Engine(stocks, max_symbols=8)
    run(engine, ticks[:cut0])
    pending = engine.prepare_swap(new, engine.snapshot())
    run(engine, ticks[cut0:cut1] + late_ticks)
    assert engine.finish_swap(pending)[1] == n + 1
    after = per_symbol(run(engine, ticks[cut1:])["all"])

    ref = Engine(stocks, max_symbols=8)
    run(ref, ticks[:cut1] + late_ticks)
    ref.loaded, ref.stats, ref.version = new, new.stats, new.version
    ref.runtime = new.runtime(8, min_bucket=8)
    ref.rewarm(list(ref.slot_of.values()))
    want = per_symbol(run(ref, ticks[cut1:])["all"])
    for sym, g in after.items():
        np.testing.assert_allclose(g[:, :3], want[sym][:, :3], rtol=2e-5)


def test_buffer_features_equal_the_live_features(stocks: LoadedModel) -> None:
    """The rows rebuilt from a buffer are the rows `apply` fed the model."""
    series = head(data.load("stocks"), 200)
    engine = Engine(stocks, max_symbols=8)
    run(engine, list(interleave(series)))
    slot = engine.slot_of[series[0].symbol]
    x = buffer_features(engine.config, engine.stats, engine.prices[[slot]],
                        engine.times[[slot]], engine.volumes[[slot]], 61)[0]  # fmt: skip
    from model.features import featurize

    full = featurize(engine.config, engine.stats, series[0])
    np.testing.assert_allclose(x, full[-61:], rtol=1e-5, atol=1e-6)


def test_a_model_of_another_config_is_refused_before_any_work(stocks: LoadedModel) -> None:
    cfg = ModelConfig(**{**stocks.config.to_dict(), "units": 16,
                         "features": tuple(stocks.config.features)})  # fmt: skip
    other = LoadedModel(LSTMForecaster(cfg, rngs=nnx.Rngs(0)), cfg, stocks.stats, {"version": "X"})
    engine = Engine(stocks, max_symbols=8)
    with pytest.raises(ValueError, match="differs from the serving"):
        engine.prepare_swap(other, engine.snapshot())
    assert engine.version == stocks.version


def test_a_symbol_evicted_and_back_in_its_old_slot_is_rewarmed(stocks: LoadedModel) -> None:
    """Free slots are reused last-in first-out: a symbol evicted between rounds usually
    comes back in its own slot with its tick count restarted. The swap must see a new life
    there (the slot's generation), not step its stale state."""
    new = perturbed(stocks, "B", seed=3)
    series = head(data.load("stocks"), 300)
    ticks = round_robin(series)
    n = len(series)
    engine = Engine(stocks, max_symbols=8)
    run(engine, ticks[: 100 * n])
    pending = engine.prepare_swap(new, engine.snapshot())
    sym = series[0].symbol
    slot = engine.slot_of[sym]
    engine._release(slot)  # forgotten (as an expired state is) ...
    engine.runtime.reset([slot])
    back = [t for t in ticks[100 * n :] if t[0] == sym][:130]
    run(engine, back)  # ... and back: same slot, seq restarted, now 130 (30 past the 100)
    assert engine.slot_of[sym] == slot
    engine.finish_swap(pending)
    ref = Engine(stocks, max_symbols=8)
    run(ref, back)
    ref.loaded, ref.stats, ref.version = new, new.stats, new.version
    ref.runtime = new.runtime(8, min_bucket=8)
    ref.rewarm([ref.slot_of[sym]])
    want = ref.runtime.states_of([ref.slot_of[sym]])
    np.testing.assert_allclose(engine.runtime.states_of([slot]), want, rtol=2e-5, atol=1e-6)
