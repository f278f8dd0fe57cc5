"""model.quality: scale-free pooled scores, hand-computed."""

from __future__ import annotations

import math
from itertools import permutations
from typing import Any

import numpy as np
import pytest

from model.quality import LAMBDA, Z90, Quality, Scorer, ewma_gain, score_series, winkler

# Each symbol: ticks b, b·e^a, b·e^(a+c); the forecast made at the second tick has point
# b·e^(a+d) and interval b·e^(a±h). Window 2: that forecast is the first scored.
A, H = 0.01, 0.015
CASES = [(0.02, 0.01), (0.02, 0.03), (-0.01, 0.0)]  # (c, d) per symbol


def _feed(scales: tuple[float, ...]) -> Quality:
    sc = Scorer(window=2)
    syms, price, point, lo, hi = [], [], [], [], []
    for k, ((c, d), b) in enumerate(zip(CASES, scales, strict=True)):
        p1 = b * math.exp(A)
        for p, f in ((b, math.nan), (p1, p1 * math.exp(d)), (b * math.exp(A + c), 1.0)):
            syms.append(f"S{k}")
            price.append(p)
            point.append(f)
            lo.append(p1 * math.exp(-H) if p == p1 else math.nan)
            hi.append(p1 * math.exp(H) if p == p1 else math.nan)
    # Interleave the symbols tick by tick, as a stream does.
    order = [k * 3 + t for t in range(3) for k in range(3)]
    res = sc.update([syms[i] for i in order], np.take(price, order), np.take(point, order),
                    np.take(lo, order), np.take(hi, order), "v1")  # fmt: skip
    assert len(res) == 3 and res.version == ["v1"] * 3
    return res.quality()


@pytest.mark.parametrize("scales", list(permutations((1e-8, 1.0, 1e9))))
def test_mixed_scales_contribute_equally_hand_computed(scales: tuple[float, ...]) -> None:
    q = _feed(scales)
    # e_m = c - d: 0.01, -0.01, -0.01; e_p = c: 0.02, 0.02, -0.01
    assert q.n == 3
    assert q.sq_model == pytest.approx(3e-4, rel=1e-9)
    assert q.sq_persistence == pytest.approx(9e-4, rel=1e-9)
    assert q.error_ratio == pytest.approx(math.sqrt(1 / 3), rel=1e-9)
    # Model interval ±0.015 around the last log price: only c = -0.01 falls inside.
    assert q.coverage == pytest.approx(1 / 3)
    # Winkler (alpha 0.1): width 0.03 plus 20× the miss of 0.005 for the two outside.
    assert q.score_model == pytest.approx(0.13 + 0.13 + 0.03, rel=1e-9)
    # Random walk: one return a = 0.01 so far, s = 0.01, half-width z·0.01.
    half = Z90 * 0.01
    miss = 0.02 - half
    rw = 2 * (2 * half + 20 * miss) + 2 * half
    assert q.score_rw == pytest.approx(rw, rel=1e-9)
    assert q.covered_rw == 1
    assert q.interval_score_ratio == pytest.approx(0.29 / rw, rel=1e-9)
    assert q.interval_score_ratio == pytest.approx(1.2045702, rel=1e-6)


def test_price_unit_pooling_would_be_dominated_by_the_expensive_symbol() -> None:
    """The reason for log errors: in price units the 1e9 symbol alone sets the ratio."""
    for big in range(3):
        scales = tuple(1e9 if k == big else 1.0 for k in range(3))
        q = _feed(scales)
        assert q.error_ratio == pytest.approx(math.sqrt(1 / 3), rel=1e-9)
        c, d = CASES[big]
        alone = abs(c - d) / abs(c)  # what a price-unit RMSE ratio would be, about
        assert abs(alone - q.error_ratio) > 0.05


def test_winkler_score() -> None:
    lo, hi = np.array([1.0, 1.0, 1.0]), np.array([3.0, 3.0, 3.0])
    y = np.array([2.0, 0.5, 4.0])
    np.testing.assert_allclose(winkler(lo, hi, y), [2.0, 2.0 + 20 * 0.5, 2.0 + 20 * 1.0])
    np.testing.assert_allclose(winkler(lo, hi, y, alpha=0.5), [2.0, 4.0, 6.0])


def test_ewma_variance_is_a_running_mean_then_riskmetrics() -> None:
    assert ewma_gain(1) == 1.0 and ewma_gain(10) == 0.1
    assert ewma_gain(100) == pytest.approx(1 - LAMBDA)
    rng = np.random.default_rng(0)
    r = rng.normal(0, 0.01, 60)
    price = 50 * np.exp(np.concatenate([[0.0], np.cumsum(r)]))
    n = len(price)
    res = score_series(price, price.copy(), price * 0.9, price * 1.1, window=2)
    # Forecasts made at ticks 1..n-2 resolve at 2..n-1; the one at tick i used r_1..r_i.
    var = np.zeros(n)
    v = 0.0
    for k in range(1, n):
        v = r[0] ** 2 if k == 1 else v + max(1 / k, 1 - LAMBDA) * (r[k - 1] ** 2 - v)
        var[k] = v
    expected = var[1 : n - 1]
    np.testing.assert_allclose(res.width_rw, 2 * Z90 * np.sqrt(expected), rtol=1e-12)
    early = np.mean(r[:5] ** 2)
    assert var[5] == pytest.approx(early, rel=1e-12)  # a running mean at first


def test_warm_up_warming_and_nan_forecasts_are_not_scored() -> None:
    price = np.linspace(10, 11, 10)
    fc = price.copy()
    fc[6] = np.nan
    res = Scorer(window=4).update(["X"] * 10, price, fc, fc * 0.99, fc * 1.01, "v",
                                  warming=np.arange(10) == 4)  # fmt: skip
    # Made at ticks 3..8 (count >= 4), minus tick 4 (warming) and 6 (NaN): 4 forecasts.
    assert len(res) == 4


def test_streaming_in_batches_equals_one_pass_and_splits_by_version() -> None:
    rng = np.random.default_rng(3)
    n, syms = 300, ["A", "B", "C"]
    price = {s: 10 ** (3 * k - 3) * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
             for k, s in enumerate(syms)}  # fmt: skip
    fc = {s: price[s] * np.exp(rng.normal(0, 0.01, n)) for s in syms}
    rows = [(s, i) for i in range(n) for s in syms]

    def cols(part: list[tuple[str, int]]) -> tuple[Any, ...]:
        p = np.array([price[s][i] for s, i in part])
        f = np.array([fc[s][i] for s, i in part])
        v = ["v1" if i < 150 else "v2" for _, i in part]
        return [s for s, _ in part], p, f, f * 0.97, f * 1.03, v

    whole = Scorer(window=20).update(*cols(rows))
    sc = Scorer(window=20)
    total = Quality()
    cuts = np.sort(rng.choice(len(rows), 40, replace=False))
    by_version: dict[str, Quality] = {}
    for part in np.split(np.arange(len(rows)), cuts):
        res = sc.update(*cols([rows[i] for i in part]))
        total = total + res.quality()
        for k, q in res.by_version().items():
            by_version[k] = by_version.get(k, Quality()) + q
    q = whole.quality()
    assert total.n == q.n == 3 * (n - 20)
    for name in ("error_ratio", "coverage", "interval_score_ratio"):
        assert getattr(total, name) == pytest.approx(getattr(q, name), rel=1e-12)
    # A forecast counts for the version that made it (at tick i < 150: v1).
    assert by_version["v1"].n == 3 * (150 - 19) and by_version["v2"].n == 3 * (n - 1 - 150)
    for s in syms:  # each symbol alone, offline, equals its rows of the stream
        alone = score_series(price[s], fc[s], fc[s] * 0.97, fc[s] * 1.03, window=20)
        assert len(alone) == n - 20


def test_bounded_symbols() -> None:
    sc = Scorer(window=2, max_symbols=5)
    sc.update([f"S{i}" for i in range(20)], np.ones(20), np.ones(20), np.ones(20),
              np.ones(20), "v")  # fmt: skip
    assert len(sc) == 5
    with pytest.raises(ValueError, match="window"):
        Scorer(window=1)


def reference_scores(batches: list[tuple[Any, ...]], window: int) -> list[tuple[Any, ...]]:
    """The scoring rules one forecast at a time in plain Python (the scalar loop `Scorer`
    replaced): per resolved forecast (version, e_model, e_persistence, covered, width_rw)."""
    state: dict[str, list[Any]] = {}  # count, last, var, point, lower, upper, version
    out = []
    for symbols, price, point, lower, upper, version, warming in batches:
        for i, sym in enumerate(symbols):
            y = float(price[i])
            st = state.setdefault(sym, [0, math.nan, math.nan, 0.0, 0.0, 0.0, None])
            if not (y > 0 and math.isfinite(y)):
                continue
            count, last, var = st[0], st[1], st[2]
            if st[6] is not None:
                half = Z90 * math.sqrt(var)
                lo, hi = math.log(st[4]), math.log(st[5])
                out.append((st[6], math.log(y) - math.log(st[3]), math.log(y) - math.log(last),
                            lo <= math.log(y) <= hi, 2 * half))  # fmt: skip
            if count >= 1:
                r = math.log(y / last)
                var = r * r if count == 1 else var + ewma_gain(count) * (r * r - var)
            count += 1
            f, lo, hi = float(point[i]), float(lower[i]), float(upper[i])
            ok = count >= window and not warming[i] and f > 0 and lo > 0 and hi > 0 and var >= 0
            st[:] = [count, y, var, f, lo, hi, version[i] if ok else None]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_scorer_equals_the_scalar_rules(seed: int) -> None:
    """Random batches: symbols repeating within a batch, bad prices, NaN and non-positive
    forecasts, warming flags, two versions; scores equal the scalar rules'."""
    rng = np.random.default_rng(seed)
    syms = [f"S{k}" for k in range(60)]
    level = {s: 10.0 ** rng.uniform(-8, 9) for s in syms}
    batches = []
    for _ in range(40):  # small batches (one by one) and large ones (numpy rounds, a tail)
        n = int(rng.integers(0, 30 if rng.random() < 0.5 else 200))
        symbols = list(rng.choice(syms[: int(rng.integers(1, 61))], n))
        price = np.array([level[s] * np.exp(rng.normal(0, 0.01)) for s in symbols])
        price[rng.random(n) < 0.05] = rng.choice([0.0, -1.0, np.nan, np.inf])
        point = price * np.exp(rng.normal(0, 0.005, n))
        point[rng.random(n) < 0.05] = np.nan
        lower, upper = point * 0.98, point * 1.02
        lower[rng.random(n) < 0.03] = -1.0
        version = [str(v) for v in rng.choice(["v1", "v2"], n)]
        batches.append((symbols, price, point, lower, upper, version, rng.random(n) < 0.1))
    ref = reference_scores(batches, window=4)
    sc, got = Scorer(window=4), []
    for b in batches:
        res = sc.update(*b[:5], b[5], b[6])
        got += list(zip(res.version, res.e_model, res.e_persistence, res.covered, res.width_rw,
                        strict=True))  # fmt: skip
    assert len(got) == len(ref) > 100
    for g, r in zip(got, ref, strict=True):
        assert g[0] == r[0] and g[3] == r[3]
        assert g[1:3] + g[4:] == pytest.approx(r[1:3] + r[4:], rel=1e-12, abs=1e-15)


def test_the_least_recently_updated_symbols_go_first() -> None:
    sc = Scorer(window=2, max_symbols=3)
    one = np.ones(1)
    for s in ["A", "B", "C", "A", "D"]:  # D pushes out B, the least recent
        sc.update([s], one, one, one * 0.9, one * 1.1, "v")
    four = np.ones(4)
    res = sc.update(["A", "B", "C", "D"], four, four, four * 0.9, four * 1.1, "v")
    # A, C and D had ticked (A twice: its forecast is scored); B started over. Four were
    # held during the batch; after it the least recent, A, went.
    assert len(sc) == 3 and res.version == ["v"]
    # So A starts over: its pending forecast went with it (held, this tick would score it).
    assert len(sc.update(["A"], one, one, one * 0.9, one * 1.1, "v")) == 0
    sc.forget(["C", "Z"])
    assert len(sc) == 2


def test_a_batch_of_one_symbols_many_ticks_equals_the_scalar_rules() -> None:
    """A one-symbol stream (a trade feed) puts hundreds of one symbol's ticks in a batch:
    four rounds with numpy, the rest one by one; the same scores either way."""
    rng = np.random.default_rng(5)
    price = 30000 * np.exp(np.cumsum(rng.normal(0, 1e-3, 500)))
    fc = price * np.exp(rng.normal(0, 5e-4, 500))
    warm = np.zeros(500, bool)
    cols = (["BTC"] * 500, price, fc, fc * 0.999, fc * 1.001, ["v"] * 500, warm)
    ref = reference_scores([cols], window=60)
    res = Scorer(window=60).update(*cols[:5], cols[5], warm)
    assert len(res) == len(ref) == 500 - 60
    assert res.e_model.tolist() == pytest.approx([r[1] for r in ref], rel=1e-12)
    assert res.width_rw.tolist() == pytest.approx([r[4] for r in ref], rel=1e-12)
