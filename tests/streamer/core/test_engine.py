"""The engine without Kafka: live forecasts equal the offline carried-state path, bad order
never touches state, checkpoints resume exactly, eviction is bounded and announced."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from model import checkpoint, data
from model.checkpoint import LoadedModel
from model.config import TrainConfig
from model.data import Series
from model.evaluate import stateful_outputs
from model.features import to_price
from model.train import prepare
from streamer.core.engine import Engine
from streamer.core.forecasts import Forecasts
from streamer.core.ticks import Decoded, decode, encode
from streamer.jobs.replay import interleave

T0 = 1_700_000_000  # epoch seconds (2023-11-14): small tick numbers are no epoch time


def head(series: list[Series], n: int) -> list[Series]:
    return [
        Series(s.symbol, s.ts[:n], s.price[:n], None if s.volume is None else s.volume[:n])
        for s in series
    ]


def offline(pred: LoadedModel, series: list[Series]) -> dict[str, np.ndarray]:
    """`tickcast evaluate`'s carried-state forecasts, warmed on each symbol's first window:
    price forecasts `[n - window + 1, 3]` (point, lower, upper) for rows window-1 .. n-1."""
    w = pred.config.window
    prep = prepare(series, pred.config, TrainConfig(), stats=pred.stats)
    outs = stateful_outputs(
        pred.runtime(len(series)), prep, [np.arange(w - 1, len(s)) for s in series]
    )
    res = {}
    for s, o in zip(series, outs, strict=True):
        res[s.symbol] = np.stack(to_price(pred.stats, s.price[w - 1 :], o[:, 0], o[:, 1]), axis=1)
    return res


def batches(
    ticks: list[tuple[str, int, float, float | None]], seed: int
) -> Iterator[tuple[Decoded, int]]:
    """Decoded micro-batches of random sizes, with the offset of their first tick."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(ticks):
        n = int(rng.integers(1, 150))
        part = ticks[i : i + n]
        good, bad = decode([encode(*t) for t in part], [t[0].encode() for t in part])
        assert bad == []
        yield good, i
        i += n


def run(
    engine: Engine, ticks: list[tuple[str, int, float, float | None]], seed: int = 0
) -> dict[str, list[Forecasts]]:
    out: dict[str, list[Forecasts]] = {}
    for good, first in batches(ticks, seed):
        f = engine.apply(
            good, np.zeros(len(good), np.int32), first + np.arange(len(good))
        ).forecasts
        out.setdefault("all", []).append(f)
    return out


def per_symbol(fs: list[Forecasts]) -> dict[str, np.ndarray]:
    rows: dict[str, list[tuple[float, float, float, bool, int, int]]] = {}
    for f in fs:
        for i, sym in enumerate(f.symbols):
            rows.setdefault(sym, []).append(
                (f.forecast[i], f.lower[i], f.upper[i], f.warming[i], f.seq[i], f.offset[i])
            )
    return {k: np.array(v, np.float64) for k, v in rows.items()}


def test_live_equals_offline_multi_symbol(stocks: LoadedModel) -> None:
    series = head(data.load("stocks"), 260)
    ticks = list(interleave(series))
    live = per_symbol(run(Engine(stocks, max_symbols=8), ticks)["all"])
    ref = offline(stocks, series)
    w = stocks.config.window
    for s in series:
        got = live[s.symbol]
        assert len(got) == len(s)  # one forecast per tick
        assert got[:, 4].tolist() == list(range(1, len(s) + 1))  # seq
        assert got[: w - 1, 3].all() and not got[w - 1 :, 3].any()  # warming flag
        np.testing.assert_allclose(got[w - 1 :, :3], ref[s.symbol], rtol=1e-5)


def test_live_equals_offline_with_lags_and_calendar_features() -> None:
    pred = checkpoint.load("model/bundled/taylor")  # features: ret, lvl, tod, dow, lags
    assert "lags" in pred.config.features and "tod" in pred.config.features
    series = head(data.load("taylor"), 200)
    live = per_symbol(run(Engine(pred, max_symbols=2), list(interleave(series)), seed=3)["all"])
    np.testing.assert_allclose(
        live[series[0].symbol][pred.config.window - 1 :, :3],
        offline(pred, series)[series[0].symbol],
        rtol=1e-5,
    )


def test_stale_and_foreign_ticks_are_rejected_untouched(stocks: LoadedModel) -> None:
    series = head(data.load("stocks"), 120)
    ticks = list(interleave(series))
    clean = per_symbol(run(Engine(stocks), ticks)["all"])
    eng = Engine(stocks)
    out: list[Forecasts] = []
    reasons: list[str] = []
    for good, first in batches(ticks, 0):
        # Inject a stale copy of the batch's first tick and one on a foreign partition.
        sym, ts = good.symbols[0], good.ts[0]
        extra = [
            encode(sym, ts - 1_000_000, 1.0),
            encode(sym, ts, 5.0),
        ]
        bad_good, _ = decode(extra, [sym.encode()] * 2)
        merged = Decoded(
            good.symbols + bad_good.symbols,
            good.ts + bad_good.ts,
            good.price + bad_good.price,
            good.volume + bad_good.volume,
            [*good.index, len(good), len(good) + 1],
        )
        part = np.zeros(len(good) + 2, np.int32)
        part[-1] = 3
        a = eng.apply(merged, part, first + np.arange(len(good) + 2))
        out.append(a.forecasts)
        reasons += [r.reason for r in a.rejected]
    got = per_symbol(out)
    n_batches = len(out)
    assert reasons.count("stale_ts") == n_batches
    assert reasons.count("partition_mismatch") >= n_batches - 4  # a new symbol takes its first
    for sym, ref in clean.items():
        np.testing.assert_array_equal(got[sym][:, :3], ref[:, :3])


def test_checkpoint_and_restore_resume_exactly(stocks: LoadedModel) -> None:
    series = head(data.load("stocks"), 200)
    ticks = list(interleave(series))
    whole = per_symbol(run(Engine(stocks), ticks)["all"])
    cut = 333
    a = Engine(stocks)
    first = per_symbol(run(a, ticks[:cut])["all"])
    records = a.checkpoint([0])[0]
    assert len(records) == len(a) >= 3 and all(v is not None for _, v in records)
    assert a.checkpoint([0])[0] == []  # nothing dirty any more
    b = Engine(stocks)
    assert b.restore([v for _, v in records if v is not None]) == (len(a), 0)
    rest = []
    for good, start in batches(ticks[cut:], 1):
        rest.append(
            b.apply(
                good, np.zeros(len(good), np.int32), cut + start + np.arange(len(good))
            ).forecasts
        )
    second = per_symbol(rest)
    for sym, ref in whole.items():
        joined = np.concatenate([first.get(sym, np.zeros((0, 6))), second[sym]])
        np.testing.assert_allclose(joined[:, :5], ref[:, :5], rtol=1e-6)  # seq continues too


def test_state_of_another_model_is_rewarmed_from_the_buffer(stocks: LoadedModel) -> None:
    series = head(data.load("stocks"), 150)
    a = Engine(stocks)
    run(a, list(interleave(series)))
    records = [v for _, v in a.checkpoint([0])[0] if v is not None]
    b = Engine(stocks)
    b.version = "other"
    assert b.restore(records) == (0, len(a))
    assert len(b) == len(a)


def test_eviction_bounded_lru_and_idle_keeps_state(stocks: LoadedModel) -> None:
    now = [0.0]
    eng = Engine(stocks, max_symbols=3, idle_evict_s=10.0, clock=lambda: now[0])

    def tick(sym: str, ts: int) -> list[str]:
        good, _ = decode([encode(sym, T0 + ts, 10.0 + ts)], [sym.encode()])
        return eng.apply(good, np.zeros(1, np.int32), np.array([ts])).evicted

    for i, sym in enumerate("ABC"):
        now[0] = float(i)
        assert tick(sym, i) == []
    now[0] = 3.0
    assert tick("D", 3) == ["A"]  # the least recently seen leaves the device
    assert sorted(eng.symbols()) == ["B", "C", "D"] and list(eng.cache.held) == ["A"]
    written = {k: v for k, v in eng.checkpoint([0])[0]}
    assert set(written) == {b"A", b"B", b"C", b"D"} and None not in written.values()
    now[0] = 100.0
    assert sorted(tick("E", 4)) == ["B", "C", "D"]  # idle for 97 s > 10 s
    assert eng.symbols() == ["E"]
    again = eng.apply(
        decode([encode("B", T0 + 10, 1.0)], [b"B"])[0], np.zeros(1, np.int32), np.array([9])
    )
    assert again.forecasts.seq.tolist() == [2]  # an evicted symbol continues


def test_ticks_without_volume_repeat_the_previous_volume(stocks: LoadedModel) -> None:
    eng = Engine(stocks)
    ticks = [
        encode("A", T0 + 1, 10.0, 5.0),
        encode("A", T0 + 2, 10.5),
        encode("A", T0 + 3, 10.2, 5.0),
    ]
    good, _ = decode(ticks, [b"A"] * 3)
    f = eng.apply(good, np.zeros(3, np.int32), np.arange(3)).forecasts
    assert np.isfinite(f.forecast).all() and (f.lower < f.forecast).all()
    assert eng.volumes[eng.slot_of["A"]][-3:].tolist() == [5.0, 5.0, 5.0]  # no change: dlogvol 0


def test_a_batch_with_more_symbols_than_slots_is_split(stocks: LoadedModel) -> None:
    eng = Engine(stocks, max_symbols=2)
    syms = ["A", "B", "C", "A", "D"]
    good, _ = decode(
        [encode(s, T0 + i, 10.0 + i) for i, s in enumerate(syms)], [s.encode() for s in syms]
    )
    a = eng.apply(good, np.zeros(5, np.int32), np.arange(5))
    assert a.forecasts.symbols == syms  # every tick answered, in order
    assert a.forecasts.index.tolist() == [0, 1, 2, 3, 4]
    # "A B" fit; then C evicts B (A ticks again in this batch); then D evicts one of A, C.
    assert a.forecasts.seq.tolist() == [1, 1, 1, 2, 1]
    assert a.evicted[0] == "B" and len(a.evicted) == 2 and len(eng) == 2


def test_a_symbol_ticking_in_the_batch_is_never_evicted_for_a_newcomer(stocks: LoadedModel) -> None:
    now = [0.0]
    eng = Engine(stocks, max_symbols=2, clock=lambda: now[0])

    def batch(syms: list[str], t0: int) -> tuple[list[int], list[str]]:
        good, _ = decode(
            [encode(s, T0 + t0 + i, 10.0) for i, s in enumerate(syms)], [s.encode() for s in syms]
        )
        a = eng.apply(good, np.zeros(len(syms), np.int32), np.arange(t0, t0 + len(syms)))
        return a.forecasts.seq.tolist(), a.evicted

    batch(["A"], 0)
    now[0] = 1.0
    batch(["B"], 1)
    now[0] = 2.0
    seq, evicted = batch(["C", "A"], 2)  # A is the least recently seen, but ticks now
    assert evicted == ["B"] and seq == [1, 2]


def test_skip_applied_drops_ticks_a_state_already_holds(stocks: LoadedModel) -> None:
    """Replaying from a checkpoint marker over symbols checkpointed later than it: the
    ticks each state already holds are dropped, the rest applied once."""
    series = head(data.load("stocks"), 150)
    ticks = list(interleave(series))
    good, bad = decode([encode(*t) for t in ticks], [t[0].encode() for t in ticks])
    assert bad == []
    part, offs = np.zeros(len(good), np.int32), np.arange(len(good))
    a, b = Engine(stocks), Engine(stocks)
    a.apply(good, part, offs)
    half = len(good) // 2
    first = Decoded(good.symbols[:half], good.ts[:half], good.price[:half], good.volume[:half],
                    good.index[:half])  # fmt: skip
    b.apply(first, part, offs)
    again = b.apply(good, part, offs, skip_applied=True)  # the first half is held already
    assert len(again.forecasts) == len(good) - half and not again.rejected
    for sym in a.slot_of:
        np.testing.assert_array_equal(a.runtime.states_of([a.slot_of[sym]]),
                                      b.runtime.states_of([b.slot_of[sym]]))  # fmt: skip
    assert len(b.apply(good, part, offs, skip_applied=True).forecasts) == 0


def test_a_backlog_runs_in_precompiled_dispatches_and_equals_one_tick_batches(
    stocks: LoadedModel,
) -> None:
    """Forty symbols with 30 ticks each in one batch (a backlog, as after a fail-over) run
    in dispatches of at most 8 steps, the lengths `precompile` compiled for that many
    symbols, and give exactly the forecasts (and carried states, seen in the batches after)
    of ticking one batch per step."""
    rng = np.random.default_rng(3)
    symbols = [f"S{i:02d}" for i in range(40)]
    steps, backlog_steps = 40, 30
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (steps, len(symbols))), axis=0))
    # Each symbol ticks on a random subset of the backlog's steps: ragged counts per symbol.
    on = rng.random((steps, len(symbols))) < 0.6
    on[backlog_steps:] = True
    ticks = [
        (sym, 1_700_000_000_000 + 60_000 * t, float(prices[t, j]), None)
        for t in range(steps)
        for j, sym in enumerate(symbols)
        if on[t, j]
    ]
    cut = int(on[:backlog_steps].sum())  # a backlog batch, then one batch per step

    def apply(engine: Engine, chunk: list[tuple[str, int, float, float | None]], first: int):
        good, bad = decode([encode(*t) for t in chunk], [t[0].encode() for t in chunk])
        assert not bad
        return engine.apply(good, np.zeros(len(good), np.int32), first + np.arange(len(good)))

    one = Engine(stocks, max_symbols=64)
    lengths: list[tuple[int, int]] = []
    advance = one.runtime.advance

    def spy(slots: np.ndarray, xs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        lengths.append((len(slots), xs.shape[0]))
        return advance(slots, xs, counts)

    one.runtime.advance = spy  # type: ignore[method-assign]
    fs_one = [apply(one, ticks[:cut], 0).forecasts]
    assert lengths and all(t <= 8 for b, t in lengths if b > 16), lengths
    fs_one += [apply(one, ticks[i : i + 40], i).forecasts for i in range(cut, len(ticks), 40)]
    backlog = per_symbol(fs_one)
    stepwise = Engine(stocks, max_symbols=64)
    bounds = np.concatenate([[0], np.cumsum(on.sum(axis=1))])
    fs = [apply(stepwise, ticks[a:b], int(a)).forecasts for a, b in itertools.pairwise(bounds)]
    ref = per_symbol(fs)
    assert backlog.keys() == ref.keys()
    for sym in ref:
        np.testing.assert_allclose(backlog[sym], ref[sym], rtol=1e-5, atol=1e-6)
