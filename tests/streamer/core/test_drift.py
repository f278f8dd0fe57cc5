"""streamer.core.drift: Page-Hinkley on the scale-free live quality, without Kafka."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from model import checkpoint
from model.data import Series, load, synthetic
from model.quality import Z90
from streamer.core.drift import Drift, DriftConfig, DriftDetector
from tests.streamer.core.test_engine import offline

N, HALF = 6000, 3000


def _interleave(series: list[Series], fc: dict[str, np.ndarray], first: int) -> tuple:
    """Columns of every symbol's ticks in time order, the forecast made at tick i being
    fc[symbol][:, i - first] (NaN before `first`)."""
    n = min(len(s) for s in series)
    syms, price, f, lo, hi, ts = [], [], [], [], [], []
    for i in range(n):
        for s in series:
            syms.append(s.symbol)
            price.append(s.price[i])
            ts.append(i)
            row = fc[s.symbol][:, i - first] if i >= first else np.full(3, np.nan)
            f.append(row[0])
            lo.append(row[1])
            hi.append(row[2])
    return syms, np.array(price), np.array(f), np.array(lo), np.array(hi), ts


def _detect(det: DriftDetector, cols: tuple, version: str = "v", batch: int = 64) -> list[Drift]:
    syms, price, f, lo, hi, ts = cols
    found = []
    for a in range(0, len(syms), batch):
        b = slice(a, a + batch)
        d = det.update_columns(syms[b], price[b], f[b], lo[b], hi[b], [version] * len(syms[b]),
                               None, ts[b])  # fmt: skip
        if d is not None:
            found.append(d)
    return found


def _ar1_forecasts(s: Series, phi: float, window: int) -> np.ndarray:
    """`[3, n]`: the AR(1) forecast of the next log return with the true innovation sd over
    the last `window` returns: an oracle for the regime with this phi."""
    r = np.diff(np.log(s.price), prepend=np.log(s.price[0]))
    mu = phi * r
    sd = np.array([np.std(r[max(1, i - window + 1) : i + 1]) if i > 1 else 0.01
                   for i in range(len(r))])  # fmt: skip
    sd = np.maximum(sd * np.sqrt(1 - phi**2), 1e-6)
    p = s.price
    return np.stack([p * np.exp(mu), p * np.exp(mu - Z90 * sd), p * np.exp(mu + Z90 * sd)])


def test_regime_change_is_detected_soon_after_and_never_before() -> None:
    series = synthetic(4, N, seed=11, kind="drift")
    fc = {s.symbol: _ar1_forecasts(s, 0.6, 60) for s in series}  # a regime-one model
    found = _detect(DriftDetector(60), _interleave(series, fc, 0))
    assert found, "no drift detected"
    first = found[0]
    assert first.last_ts is not None and HALF <= first.last_ts < HALF + 100, found
    assert first.signal in ("error", "coverage") and first.version == "v"


def test_no_alarm_for_a_model_that_stays_right() -> None:
    series = synthetic(4, N, seed=11, kind="drift")
    # Right in both regimes: phi flips with the data.
    fc = {}
    for s in series:
        one, two = _ar1_forecasts(s, 0.6, 60), _ar1_forecasts(s, -0.6, 60)
        fc[s.symbol] = np.where(np.arange(len(s)) < HALF, one, two)
    assert _detect(DriftDetector(60), _interleave(series, fc, 0)) == []


@pytest.mark.parametrize("name", ["stocks", "msft"])
def test_no_alarm_on_a_bundled_series_with_its_model(name: str) -> None:
    pred = checkpoint.load(f"model/bundled/{name}")
    series = load(name)
    w = pred.config.window
    ref = offline(pred, series)
    cols = _interleave(series, {k: v.T for k, v in ref.items()}, w - 1)
    assert _detect(DriftDetector(w), cols, pred.version) == []


def test_a_new_version_resets_and_records_are_read() -> None:
    series = synthetic(2, 1200, seed=2, kind="drift")
    det = DriftDetector(20, DriftConfig(min_forecasts=50))
    recs = []
    for i in range(1200):
        for s in series:
            p = float(s.price[i])
            v = "v1" if i < 600 else "v2"
            recs.append(orjson.dumps({"symbol": s.symbol, "ts": i, "price": p, "forecast": p,
                                      "lower": p * 0.98, "upper": p * 1.02, "warming": i < 19,
                                      "model": v, "seq": i + 1}))  # fmt: skip
    recs.insert(5, b"{not json")  # skipped
    assert det.update_records(recs[:1201]) is None and det.version == "v1"
    assert det.n == 2 * (600 - 20)  # made at ticks 19..598 of each symbol and resolved
    det.update_records(recs[1201:])
    assert det.version == "v2" and det.n < 2 * 600  # counted from the switch
