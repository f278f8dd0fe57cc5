"""streamer.quality: the live series per model version, on a fresh registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from model.quality import Scorer
from streamer.quality import KEEP_VERSIONS, LiveQuality


def _value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def _stream(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    price = {s: 10.0 ** (4 * k - 4) * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
             for k, s in enumerate("ABC")}  # fmt: skip
    syms = [s for _ in range(n) for s in "ABC"]
    p = np.array([price[s][i] for i in range(n) for s in "ABC"])
    f = p * np.exp(rng.normal(0, 0.005, len(p)))
    return syms, p, f


def test_gauges_and_counters_per_version_equal_the_scorer() -> None:
    reg = CollectorRegistry()
    lq = LiveQuality(reg)
    syms, p, f = _stream(200)
    cut = 3 * 120  # v1 serves the first 120 ticks of each symbol, v2 the rest
    for lo, hi, v in ((0, cut, "v1"), (cut, len(p), "v2")):
        for a in range(lo, hi, 37):  # micro-batches
            b = min(a + 37, hi)
            lq.record(syms[a:b], p[a:b], f[a:b], f[a:b] * 0.98, f[a:b] * 1.02,
                      np.zeros(b - a, bool), v, window=10)  # fmt: skip
    made_by = ["v1" if i < cut else "v2" for i in range(len(p))]
    ref = Scorer(10).update(syms, p, f, f * 0.98, f * 1.02, made_by).by_version()
    for v in ("v1", "v2"):
        q = ref[v]
        assert _value(reg, "tickcast_quality_forecasts_total", version=v) == q.n > 0
        assert _value(reg, "tickcast_live_error_ratio", version=v) == pytest.approx(q.error_ratio)
        assert _value(reg, "tickcast_live_coverage", version=v) == pytest.approx(q.coverage)
        assert _value(reg, "tickcast_live_interval_score_ratio", version=v) == pytest.approx(
            q.interval_score_ratio
        )
        sq = _value(reg, "tickcast_quality_sq_log_error_total", version=v, forecaster="model")
        assert sq == pytest.approx(q.sq_model)
        rw = _value(reg, "tickcast_quality_interval_score_total", version=v, forecaster="ewma_rw")
        assert rw == pytest.approx(q.score_rw)
    # The forecast made at v1's last tick is resolved under v2 but counts for v1.
    assert ref["v1"].n == 3 * (120 - 9)
    st = lq.status("v2")
    assert st["n"] == ref["v2"].n and st["coverage90"] == pytest.approx(
        ref["v2"].coverage, abs=1e-6
    )
    assert lq.status("nope") == {"version": "nope", "n": 0, "error_ratio": None,
                                 "coverage90": None, "interval_score_ratio": None}  # fmt: skip


def test_version_labels_stay_bounded() -> None:
    reg = CollectorRegistry()
    lq = LiveQuality(reg)
    syms, p, f = _stream(30)
    versions = [f"v{i}" for i in range(KEEP_VERSIONS + 3)]
    for k, v in enumerate(versions):
        a, b = 3 * 5 * k, 3 * 5 * (k + 1)
        lq.record(syms[a:b], p[a:b], f[a:b], f[a:b] * 0.9, f[a:b] * 1.1, np.zeros(b - a, bool),
                  v, window=2)  # fmt: skip
    kept = {s.labels["version"] for m in reg.collect() for s in m.samples
            if m.name == "tickcast_live_coverage"}  # fmt: skip
    assert kept == set(versions[-KEEP_VERSIONS:])
    assert list(lq.totals) == versions[-KEEP_VERSIONS:]
    assert all(math.isfinite(q.coverage) for q in lq.totals.values())
