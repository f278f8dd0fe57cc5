"""Walk-forward evaluation against persistence and AR(60), and the real-vs-predicted plot.

Every forecast targets tick t+1 and is made from ticks <= t only. The model is scored two
ways over the same test forecasts:

* `stateful` (the live way): each symbol's slot in a `model.runtime.Runtime` is warmed from
  the `window` ticks before the test split, then advanced one `step` per tick, carrying
  `(h, c)` to the end. This is exactly what the server does.
* `window` (the tutorial's way): a fresh pass over the last `window` ticks for every forecast.

Baselines: persistence (next = last) and a least-squares AR on the last 60 levels with an
intercept, fitted per symbol on everything before the test split.

Metrics are in the series' own units: RMSE, MAE, MASE (MAE over the in-sample MAE of the
one-step naive forecast on the training split), directional accuracy (sign of the predicted
move vs the actual move; a forecast of no move scores 0.5, so persistence scores 0.5) and,
for the model, the share of outcomes inside the 90% interval.

Scale-free figures (`report["quality"]`, `model.quality`): log-error RMSE ratio to
persistence, coverage, and the Winkler interval score beside a random walk with an EWMA
volatility (RiskMetrics, lambda = 0.94), pooled over symbols so none dominates by its price
level. The random walk is warmed on the same `window` ticks as the model; the same code
scores the live stream (`streamer.metrics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.config import TrainConfig
from model.data import Series
from model.features import to_price
from model.quality import Quality, score_series
from model.runtime import Runtime
from model.train import Prepared, prepare

__all__ = [
    "Evaluation",
    "ar_forecasts",
    "evaluate",
    "interval_metrics",
    "metrics",
    "plot",
    "scale_free",
    "stateful_outputs",
]

AR_ORDER = 60


@dataclass
class SymbolForecasts:
    """One symbol's test forecasts; arrays `[n]` aligned on the forecast row t (target t+1)."""

    symbol: str
    ts: np.ndarray  # time of the target tick, epoch ms
    last: np.ndarray  # price at t (persistence forecast)
    actual: np.ndarray  # price at t+1
    stateful: np.ndarray  # (point, lower, upper) stacked: [3, n]
    window: np.ndarray  # [3, n]
    ar: np.ndarray  # [n]
    naive_mae: float  # in-sample MAE of the naive forecast on the training split
    rw: np.ndarray | None = None  # EWMA random walk's 90% interval (lower, upper): [2, n]
    quality: Quality | None = None  # scale-free sums of the carried-state forecasts


@dataclass
class Evaluation:
    n_test: int
    report: dict[str, Any]
    per_symbol: list[SymbolForecasts]


def ratio(a: float, b: float) -> float | None:
    """`a / b`, or None where `b` is 0 (a constant test series: persistence is exact)."""
    return a / b if b > 0 else None


def ratio_text(r: float | None) -> str:
    """A ratio for the tables, 11 characters (`-` where undefined)."""
    return f"{r:10.4f}x" if r is not None else f"{'-':>10s} "


def metrics(
    pred: np.ndarray,
    last: np.ndarray,
    actual: np.ndarray,
    mase_scale: np.ndarray,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
) -> dict[str, float]:
    """RMSE, MAE, MASE, directional accuracy (and coverage90 with an interval); all `[n]`."""
    err = pred - actual
    d = np.sign(pred - last) * np.sign(actual - last)
    out = {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "mase": float(np.mean(np.abs(err) / mase_scale)),
        "directional_accuracy": float(np.mean(np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5)))),
    }
    if lo is not None and hi is not None:
        out["coverage90"] = float(np.mean((actual >= lo) & (actual <= hi)))
    return out


def ar_forecasts(
    price: np.ndarray, fit_until: int, rows: np.ndarray, order: int = AR_ORDER
) -> np.ndarray:
    """Least-squares AR(order) with intercept on levels.

    Fitted on targets with index < fit_until; returns the forecast of price[t+1] for each
    t in `rows` (each needs t >= order - 1).
    """

    def design(ts: np.ndarray) -> np.ndarray:
        lags = np.stack([price[ts - k] for k in range(order)], axis=1)
        return np.hstack([np.ones((len(ts), 1)), lags])

    fit_rows = np.arange(order - 1, fit_until - 1)
    if len(fit_rows) <= order + 1:
        raise ValueError(f"AR({order}) needs at least {2 * order + 2} rows before the test split")
    coef, *_ = np.linalg.lstsq(design(fit_rows), price[fit_rows + 1], rcond=None)
    return np.asarray(design(rows) @ coef)


def _windows(x: np.ndarray, rows: np.ndarray, w: int) -> np.ndarray:
    """`[n, w, features]`: the w rows ending at each of `rows`."""
    idx = rows[:, None] + np.arange(-w + 1, 1)[None, :]
    return x[idx]


def stateful_outputs(runtime: Runtime, prep: Prepared, rows: list[np.ndarray]) -> list[np.ndarray]:
    """Live-path outputs `[n, 2]` per symbol: warm slot i on the window ending at rows[i][0],
    then one batched `step` per later row, symbols side by side as the server runs them."""
    w = runtime.config.window
    slots = np.arange(len(rows))
    first = np.array([r[0] for r in rows])
    warm = runtime.warm(
        slots, np.stack([prep.x[i][f - w + 1 : f + 1] for i, f in enumerate(first)])
    )
    outs = [[warm[i]] for i in slots]
    longest = max(len(r) for r in rows)
    for k in range(1, longest):
        live = np.array([i for i in slots if k < len(rows[i])])
        xk = np.stack([prep.x[i][rows[i][k]] for i in live])
        for i, o in zip(live, runtime.step(live, xk), strict=True):
            outs[i].append(o)
    return [np.stack(o) for o in outs]


def evaluate(
    series: list[Series],
    params: Any,
    config: Any,
    stats: Any,
    tc: TrainConfig = TrainConfig(),  # noqa: B008 - frozen dataclass
) -> Evaluation:
    """One-step-ahead walk-forward over the test split of `series` with a fitted model."""
    prep = prepare(series, config, tc, stats=stats)
    w = config.window
    rows_per: list[np.ndarray] = []
    keep: list[int] = []
    for i, (v, t) in enumerate(prep.bounds):
        n = len(series[i])
        first = max(t - 1, w - 1, AR_ORDER - 1)
        # Skip a symbol without a test part, or too short before it to fit AR(60) (a recent
        # listing): one short symbol must not void the report of the others.
        if n - 1 - first < 1 or v < 2 or t < 2 * AR_ORDER + 2:
            continue
        rows_per.append(np.arange(first, n - 1))
        keep.append(i)
    if not keep:
        raise ValueError(
            f"no symbol has a test split after enough history: at least {2 * AR_ORDER + 2} rows "
            f"before it (AR({AR_ORDER})) and the model's window of {w}"
        )
    sub = Prepared(
        [prep.series[i] for i in keep], prep.split, prep.stats,
        [prep.x[i] for i in keep], [prep.y[i] for i in keep], [prep.bounds[i] for i in keep],
    )  # fmt: skip
    runtime = Runtime(params, config, n_slots=len(keep))
    live = stateful_outputs(runtime, sub, rows_per)
    per: list[SymbolForecasts] = []
    for j, i in enumerate(keep):
        s, rows = series[i], rows_per[j]
        v, t = prep.bounds[i]
        win = runtime.window_forecast(_windows(prep.x[i], rows, w))
        last, actual = s.price[rows], s.price[rows + 1]
        naive = float(np.mean(np.abs(np.diff(s.price[:v]))))
        stateful = np.stack(to_price(stats, last, live[j][:, 0], live[j][:, 1]))
        rw, quality = scale_free(s.price, rows, stateful, w)
        per.append(
            SymbolForecasts(
                symbol=s.symbol,
                ts=s.ts[rows + 1],
                last=last,
                actual=actual,
                stateful=stateful,
                window=np.stack(to_price(stats, last, win[:, 0], win[:, 1])),
                ar=ar_forecasts(s.price, t, rows),
                # MASE's scale is at least one price increment (a constant series has 0).
                naive_mae=max(naive, float(np.median(s.price[:v])) * stats.min_step, 1e-12),
                rw=rw,
                quality=quality,
            )
        )
    report = _report(per)
    report["window"] = w  # the model's window: the tutorial-style pass re-reads this many steps
    skipped = sorted({s.symbol for s in series} - {p.symbol for p in per})
    if skipped:
        report["skipped_symbols"] = skipped
    return Evaluation(n_test=report["n_test"], report=report, per_symbol=per)


def scale_free(
    price: np.ndarray, rows: np.ndarray, stateful: np.ndarray, w: int
) -> tuple[np.ndarray, Quality]:
    """`model.quality` over one symbol's test forecasts (made at `rows`, `[3, n]` point,
    lower, upper in price units), the random walk warmed on the model's warm-up window:
    the EWMA random walk's interval `[2, n]` in price units and the pooled sums."""
    start = int(rows[0]) - w + 1
    m = len(price) - start
    fc = np.full((3, m), np.nan)
    fc[:, rows - start] = stateful
    res = score_series(price[start:], fc[0], fc[1], fc[2], w)
    if len(res) != len(rows):  # every test forecast resolves (prices are positive)
        raise ValueError(f"scored {len(res)} of {len(rows)} forecasts: non-positive prices?")
    last = price[rows]
    half = res.width_rw / 2
    return np.stack([last * np.exp(-half), last * np.exp(half)]), res.quality()


def interval_metrics(lo: np.ndarray, hi: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Coverage, mean width and mean Winkler score (alpha 0.1) of intervals, price units."""
    from model.quality import winkler

    return {
        "coverage90": float(np.mean((actual >= lo) & (actual <= hi))),
        "interval_width": float(np.mean(hi - lo)),
        "interval_score": float(np.mean(winkler(lo, hi, actual))),
    }


def _report(per: list[SymbolForecasts]) -> dict[str, Any]:
    cat = {
        k: np.concatenate([getattr(p, k) for p in per], axis=-1)
        for k in ("last", "actual", "stateful", "window", "ar")
    }
    scale = np.concatenate([np.full(len(p.actual), p.naive_mae) for p in per])
    last, actual = cat["last"], cat["actual"]

    def model_metrics(a: np.ndarray) -> dict[str, float]:
        return metrics(a[0], last, actual, scale, a[1], a[2])

    report: dict[str, Any] = {
        "n_test": len(actual),
        "model": {
            "stateful": model_metrics(cat["stateful"]),
            "window": model_metrics(cat["window"]),
        },
        "persistence": metrics(last, last, actual, scale),
        "ar60": metrics(cat["ar"], last, actual, scale),
    }
    # The EWMA random walk: persistence's point forecast with an EWMA-volatility interval.
    rw = np.concatenate([p.rw for p in per if p.rw is not None], axis=-1)
    report["ewma_rw"] = {
        **report["persistence"],
        **interval_metrics(rw[0], rw[1], actual),
    }
    report["model"]["stateful"].update(
        {k: v for k, v in interval_metrics(cat["stateful"][1], cat["stateful"][2], actual).items()
         if k != "coverage90"}
    )  # fmt: skip
    quality = sum((p.quality for p in per if p.quality is not None), Quality())
    report["quality"] = quality.summary()  # scale-free, pooled: model.quality
    report["interval_score_vs_ewma_rw"] = quality.interval_score_ratio
    p_rmse = report["persistence"]["rmse"]
    report["rmse_vs_persistence"] = {
        "stateful": ratio(report["model"]["stateful"]["rmse"], p_rmse),
        "window": ratio(report["model"]["window"]["rmse"], p_rmse),
        "ar60": ratio(report["ar60"]["rmse"], p_rmse),
    }
    if len(per) > 1:
        report["per_symbol"] = {
            p.symbol: {
                "n_test": len(p.actual),
                "stateful_rmse": float(np.sqrt(np.mean((p.stateful[0] - p.actual) ** 2))),
                "persistence_rmse": float(np.sqrt(np.mean((p.last - p.actual) ** 2))),
                "ar60_rmse": float(np.sqrt(np.mean((p.ar - p.actual) ** 2))),
                "coverage90": float(
                    np.mean((p.actual >= p.stateful[1]) & (p.actual <= p.stateful[2]))
                ),
                **(
                    {}
                    if p.quality is None
                    else {
                        "error_ratio": p.quality.error_ratio,
                        "interval_score_ratio": p.quality.interval_score_ratio,
                        "ewma_rw_coverage90": p.quality.summary()["ewma_rw"]["coverage90"],
                    }
                ),
            }
            for p in per
        }
    return report


def format_table(report: dict[str, Any]) -> str:
    """Human-readable side-by-side table of a report, then the scale-free summary."""
    rows = [
        ("LSTM, carried state (live)", report["model"]["stateful"]),
        (f"LSTM, {report.get('window', 60)}-step window (tutorial)", report["model"]["window"]),
        ("persistence (last value)", report["persistence"]),
        ("AR(60), least squares", report["ar60"]),
    ]
    if "ewma_rw" in report:
        rows.append(("random walk, EWMA vol (0.94)", report["ewma_rw"]))
    p = report["persistence"]["rmse"]
    lines = [
        f"{'forecaster':34s} {'RMSE':>12s} {'vs persist.':>11s} {'MAE':>12s} {'MASE':>7s} "
        f"{'dir.acc':>7s} {'cover90':>7s} {'log width':>9s} {'log score':>9s}",
    ]
    q = report.get("quality") or {}
    log_cols = {"LSTM, carried state (live)": q.get("model"),
                "random walk, EWMA vol (0.94)": q.get("ewma_rw")}  # fmt: skip
    for name, m in rows:
        cov = f"{m['coverage90']:7.3f}" if "coverage90" in m else f"{'-':>7s}"
        lq = log_cols.get(name)
        extra = (f" {lq['interval_width']:9.5f} {lq['interval_score']:9.5f}" if lq
                 else f" {'-':>9s} {'-':>9s}")  # fmt: skip
        lines.append(
            f"{name:34s} {m['rmse']:12.6g} {ratio_text(ratio(m['rmse'], p))} {m['mae']:12.6g} "
            f"{m['mase']:7.4f} {m['directional_accuracy']:7.3f} {cov}{extra}"
        )
    lines.append(f"{report['n_test']} one-step-ahead test forecasts, walk-forward")
    if q:
        lines.append(
            f"scale-free, pooled over symbols (log prices): error ratio vs persistence "
            f"{_num(q['error_ratio'], '.4f')}, coverage {_num(q['coverage90'], '.3f')}, "
            f"Winkler interval score vs EWMA random walk {_times(q['interval_score_ratio'])}"
        )
    return "\n".join(lines)


def plot(ev: Evaluation, path: str, last_n: int = 250) -> None:
    """Real vs predicted (carried state) with the 90% band, one row per symbol (at most 4):
    the whole test split on the left, its last `last_n` ticks on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    shown = ev.per_symbol[:4]
    fig, axes = plt.subplots(len(shown), 2, figsize=(14, 3.6 * len(shown)), squeeze=False)
    for row, p in zip(axes, shown, strict=True):
        t = (p.ts.astype("datetime64[ms]")).astype(object)
        for ax, sl in ((row[0], slice(None)), (row[1], slice(-last_n, None))):
            ax.fill_between(t[sl], p.stateful[1][sl], p.stateful[2][sl], color="tab:orange",
                            alpha=0.25, linewidth=0, label="90% interval")  # fmt: skip
            ax.plot(t[sl], p.actual[sl], color="black", linewidth=0.9, label="real")
            ax.plot(t[sl], p.stateful[0][sl], color="tab:orange", linewidth=0.9, label="predicted")
            fmt = mdates.ConciseDateFormatter(ax.xaxis.get_major_locator())  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_formatter(fmt)
            ax.grid(alpha=0.3)
        rmse = float(np.sqrt(np.mean((p.stateful[0] - p.actual) ** 2)))
        prm = float(np.sqrt(np.mean((p.last - p.actual) ** 2)))
        row[0].set_title(f"{p.symbol}: test split, RMSE {rmse:.4g} (persistence {prm:.4g})")
        row[1].set_title(f"{p.symbol}: last {min(last_n, len(p.actual))} ticks")
        row[0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _times(x: float | None) -> str:
    """A ratio as `0.9612x`, or `-` where there is none."""
    return f"{x:.4f}x" if x is not None and math.isfinite(x) else "-"


def _num(x: float | None, spec: str) -> str:
    """`x` formatted, or `-` where there is no value (NaN: e.g. a ratio to a persistence
    that was exact on a constant series)."""
    return "-" if x is None or not math.isfinite(x) else format(x, spec)
