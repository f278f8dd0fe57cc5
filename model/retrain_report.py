"""The retraining attempt, shown: the summary table and the plot of champion vs challenger
vs actual on the evaluation slice (`model.retrain` decides; this module reports)."""

from __future__ import annotations

import numpy as np

from model.evaluate import AR_ORDER, ratio, ratio_text
from model.retrain import Attempt

__all__ = ["format_summary", "plot"]


def format_summary(a: Attempt) -> str:
    """Champion vs challenger vs persistence vs AR(60) vs the EWMA random walk on the
    evaluation slice (price units, then the scale-free pooled scores the decision uses),
    and the decision with its reason."""
    lines = []
    if a.scores:
        p = a.scores["persistence"]["rmse"]
        lines.append(
            f"{'forecaster':36s} {'RMSE':>12s} {'vs persist.':>11s} {'MAE':>12s} {'MASE':>7s} "
            f"{'dir.acc':>7s} {'cover90':>7s} {'err.ratio':>9s} {'int.score':>9s}"
        )
        names = {
            "champion": f"champion {a.champion_version}",
            "challenger": "challenger",
            "persistence": "persistence (last value)",
            "ar60": f"AR({AR_ORDER}), least squares",
            "ewma_rw": "random walk, EWMA vol (0.94)",
        }
        for key, label in names.items():
            m = a.scores.get(key)
            if m is None:
                continue
            cov = f"{m['coverage90']:7.3f}" if "coverage90" in m else f"{'-':>7s}"
            err = m.get("error_ratio", 1.0 if key in ("persistence", "ewma_rw") else None)
            score = m.get("interval_score_ratio", 1.0 if key == "ewma_rw" else None)
            sf = "".join(f" {x:9.4f}" if x is not None else f" {'-':>9s}" for x in (err, score))
            lines.append(
                f"{label[:36]:36s} {m['rmse']:12.6g} {ratio_text(ratio(m['rmse'], p))} "
                f"{m['mae']:12.6g} "
                f"{m['mase']:7.4f} {m['directional_accuracy']:7.3f} {cov}{sf}"
            )
        lines.append(
            f"{a.n_eval} one-step-ahead forecasts over the evaluation slice "
            f"({len(a.symbols)} symbol(s), {a.n_ticks} ticks read); err.ratio: RMSE of "
            "log-price errors over persistence's, int.score: Winkler score over the EWMA "
            "random walk's, both pooled over symbols"
        )
        if a.champion_overlap:
            lines.append("note: the champion was trained on part of this slice (it is favoured)")
    lines.append(f"decision: {a.outcome.upper()}: {a.reason}")
    return "\n".join(lines)


def plot(a: Attempt, path: str, last_n: int = 200, max_symbols: int = 3) -> bool:
    """Actual vs champion vs challenger (with the challenger's 90% band) over the last
    `last_n` evaluation ticks of up to `max_symbols` symbols, one panel each. Returns False
    (writing nothing) for an attempt without an evaluation."""
    if a.champion_eval is None or a.challenger_eval is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    champ = {p.symbol: p for p in a.champion_eval.per_symbol}
    shown = [p for p in a.challenger_eval.per_symbol if p.symbol in champ][:max_symbols]
    if not shown:
        return False
    fig, axes = plt.subplots(len(shown), 1, figsize=(12, 3.4 * len(shown)), squeeze=False)
    for ax, p in zip(axes[:, 0], shown, strict=True):
        c = champ[p.symbol]
        sl = slice(-last_n, None)
        t = p.ts[sl].astype("datetime64[ms]").astype(object)
        ax.fill_between(t, p.stateful[1][sl], p.stateful[2][sl], color="tab:orange", alpha=0.25,
                        linewidth=0, label="challenger 90% interval")  # fmt: skip
        if p.rw is not None:
            for k, lab in ((0, "EWMA random walk 90% interval"), (1, None)):
                ax.plot(t, p.rw[k][sl], color="tab:gray", linewidth=0.7, linestyle="--",
                        label=lab)  # fmt: skip
        ax.plot(t, p.ar[sl], color="tab:green", linewidth=0.7, alpha=0.8, label="AR(60)")
        ax.plot(t, p.actual[sl], color="black", linewidth=0.9, label="actual")
        ax.plot(t, c.stateful[0][sl], color="tab:blue", linewidth=0.9, label="champion")
        ax.plot(t, p.stateful[0][sl], color="tab:orange", linewidth=0.9, label="challenger")

        def rmse(x: np.ndarray, actual: np.ndarray = p.actual) -> float:
            return float(np.sqrt(np.mean((x - actual) ** 2)))

        title = (
            f"{p.symbol}: RMSE champion {rmse(c.stateful[0]):.4g}, challenger "
            f"{rmse(p.stateful[0]):.4g}, persistence {rmse(p.last):.4g}, AR(60) {rmse(p.ar):.4g}"
        )
        if p.quality is not None and c.quality is not None:
            title += (
                f"\ninterval score vs EWMA random walk: champion "
                f"{c.quality.interval_score_ratio:.3f}x, challenger "
                f"{p.quality.interval_score_ratio:.3f}x; coverage {c.quality.coverage:.2f}, "
                f"{p.quality.coverage:.2f} (random walk {p.quality.covered_rw / p.quality.n:.2f})"
            )
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{a.outcome}: {a.reason}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
