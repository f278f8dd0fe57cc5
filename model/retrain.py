"""Champion/challenger retraining, the pure core: series in, a decision out (no Kafka).

`retrain(series, champion, rc)`:

1. Split the data chronologically with cut times shared by every symbol: the last
   `rc.eval_fraction` of the ticks is the evaluation slice, the `rc.val_fraction` before it
   validation, the rest training (the `split_times` of every other tool).
2. Fit a challenger on training + validation only (`model.train.fit`, whose refit stops
   at the evaluation slice): fine-tuned from the champion's weights with its config and
   feature statistics by default, or from scratch (same config, fresh statistics).
3. Score champion and challenger walk-forward over the evaluation slice with
   `model.evaluate.evaluate` (the carried-state path the server runs), beside persistence
   and AR(60), which are fitted on everything before the slice.
4. Decide on scale-free scores pooled over symbols (`model.quality`: log-price errors, so
   every symbol counts whatever its price level), `decide_scale_free`: promote when the
   challenger's error ratio to persistence is at least `rc.margin` (relative) below the
   champion's; when the two are within the margin of each other, the Winkler interval
   score decides, by the same margin; otherwise reject. Both are reported, beside
   persistence, AR(60) and a random walk with an EWMA volatility (RiskMetrics 0.94). Too
   little data is a skip with the reason, never an error.

The registry bookkeeping (`save_challenger`, `prune`, `attempt_record`) is here too, as
plain functions over files; the summary table and the plot are `model.retrain_report`; the
Kafka shell that reads the ticks, loops and announces is `streamer.jobs.retrain`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from model.checkpoint import LoadedModel
from model.config import ModelConfig, TrainConfig
from model.data import DataError, Series
from model.evaluate import AR_ORDER, Evaluation, evaluate
from model.quality import Quality
from model.registry import Registry
from model.train import FitResult, Init, describe, fit

__all__ = [
    "Attempt",
    "RetrainConfig",
    "attempt_record",
    "decide",
    "decide_scale_free",
    "min_ticks",
    "prune",
    "retrain",
    "save_challenger",
]

Outcome = Literal["promoted", "rejected", "skipped"]
MIN_EVAL_FORECASTS = 10  # per symbol: fewer test forecasts than this is no comparison


@dataclass(frozen=True)
class RetrainConfig:
    """How one retraining attempt runs. Fractions are of the ticks read, pooled."""

    margin: float = 0.01  # relative improvement the challenger needs (0.01 = 1%): error
    # ratio first, interval score when the error ratios are within it of each other
    eval_fraction: float = 0.2  # the most recent part: champion vs challenger, never trained on
    val_fraction: float = 0.1  # before it: early stopping and interval calibration
    from_scratch: bool = False  # fresh weights and statistics instead of fine-tuning
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(max_steps=600, learning_rate=5e-4, max_seconds=120.0)
    )

    def train_config(self) -> TrainConfig:
        """The fit's TrainConfig with this attempt's split (its test part = the eval slice)."""
        return dataclasses.replace(
            self.train, val_fraction=self.val_fraction, test_fraction=self.eval_fraction
        )


@dataclass
class Attempt:
    """One attempt's result. `scores` maps champion, challenger, persistence, ar60 and
    ewma_rw to the metrics of `model.evaluate.metrics` (RMSE and MAE in price units) over
    the same evaluation forecasts, the models' also to the scale-free pooled figures
    (`error_ratio`, `interval_score_ratio`, `log_rmse`, `interval_score`, `interval_width`,
    log units; `model.quality`); empty when skipped."""

    outcome: Outcome
    reason: str
    champion_version: str
    symbols: list[str]  # symbols used (enough ticks)
    dropped_symbols: list[str]  # symbols read but too short to use
    n_ticks: int  # ticks of the used symbols
    first_ts_ms: int | None
    last_ts_ms: int | None
    eval_start_ms: int | None = None  # first tick of the evaluation slice
    val_start_ms: int | None = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    n_eval: int = 0  # evaluation forecasts (pooled over symbols)
    improvement: float | None = None  # 1 - challenger / champion error ratio (scale-free)
    challenger: FitResult | None = None
    champion_eval: Evaluation | None = None
    challenger_eval: Evaluation | None = None
    champion_overlap: bool = False  # the champion was trained on part of the eval slice
    seconds: float = 0.0


def min_ticks(config: ModelConfig, rc: RetrainConfig) -> int:
    """Fewest ticks a symbol needs: AR(60) wants 2·60+2 rows before the evaluation slice,
    the model a window, and the slice at least `MIN_EVAL_FORECASTS` forecasts."""
    before = max(2 * AR_ORDER + 2, config.window + 2)
    n_before = int(np.ceil(before / max(1.0 - rc.eval_fraction, 1e-9)))
    n_eval = int(np.ceil((MIN_EVAL_FORECASTS + 1) / max(rc.eval_fraction, 1e-9)))
    return max(n_before, n_eval) + 1


def decide(champion_rmse: float, challenger_rmse: float, margin: float) -> tuple[bool, str]:
    """Promote iff challenger RMSE <= (1 - margin) · champion RMSE; (promote, why)."""
    if not np.isfinite(challenger_rmse):
        return False, "challenger RMSE is not finite"
    if not np.isfinite(champion_rmse):
        return True, f"champion RMSE is {champion_rmse}; challenger {challenger_rmse:.6g} wins"
    if champion_rmse <= 0:
        return False, "champion RMSE is 0; nothing to improve on"
    imp = 1.0 - challenger_rmse / champion_rmse
    vs = f"challenger RMSE {challenger_rmse:.6g} vs champion {champion_rmse:.6g}"
    if imp >= margin:
        return True, f"{vs}: {imp:.2%} better, margin {margin:.2%}"
    if imp > 0:
        return False, f"{vs}: only {imp:.2%} better, margin {margin:.2%}"
    return False, f"{vs}: {-imp:.2%} worse"


def decide_scale_free(champion: Quality, challenger: Quality, margin: float) -> tuple[bool, str]:
    """The promotion rule on pooled scale-free scores over the same forecasts; (promote, why).

    Error ratio (log RMSE over persistence's) first: promote when the challenger's is at
    least `margin` below the champion's, reject when it is at least `margin` above. Within
    the margin (on prices, point forecasts rarely differ by more than noise) the Winkler
    interval score decides: promote when the challenger's is at least `margin` below.
    """
    ce, ne = champion.error_ratio, challenger.error_ratio
    ci, ni = champion.score_model, challenger.score_model
    if not np.isfinite(ne):
        return False, "challenger error ratio is not finite (no scored forecasts?)"
    if not np.isfinite(ce):
        return True, f"champion error ratio is {ce}; challenger {ne:.4f} wins"
    if ce <= 0:
        return False, "champion error ratio is 0; nothing to improve on"
    imp = 1.0 - ne / ce
    vs = f"error ratio to persistence: challenger {ne:.4f} vs champion {ce:.4f}"
    if imp >= margin:
        return True, f"{vs}: {imp:.2%} better, margin {margin:.2%}"
    if imp <= -margin:
        return False, f"{vs}: {-imp:.2%} worse, margin {margin:.2%}"
    i_imp = 1.0 - ni / ci if ci > 0 else 0.0
    tie = f"{vs} (within the margin {margin:.2%}); interval score "
    tie += f"{challenger.interval_score_ratio:.4f} vs {champion.interval_score_ratio:.4f} x EWMA RW"
    if i_imp >= margin:
        return True, f"{tie}: {i_imp:.2%} better"
    return False, f"{tie}: {i_imp:+.2%}, not {margin:.2%} better"


def _usable(series: list[Series], need: int) -> tuple[list[Series], list[str]]:
    keep = [s for s in series if len(s) >= need]
    return keep, sorted(s.symbol for s in series if len(s) < need)


def retrain(series: list[Series], champion: LoadedModel, rc: RetrainConfig) -> Attempt:
    """Fit a challenger on `series` and score it against `champion` (see the module doc).

    Args:
      series: one `Series` per symbol, strictly increasing ts (epoch ms), prices > 0.
      champion: the current model; its config is the challenger's.
      rc: margin, split fractions, fine-tune or scratch, training knobs.
    """
    t0 = time.perf_counter()
    config = champion.config
    need = min_ticks(config, rc)
    used, dropped = _usable(series, need)
    base = Attempt(
        outcome="skipped",
        reason="",
        champion_version=champion.version,
        symbols=[s.symbol for s in used],
        dropped_symbols=dropped,
        n_ticks=sum(len(s) for s in used),
        first_ts_ms=int(min(s.ts[0] for s in used)) if used else None,
        last_ts_ms=int(max(s.ts[-1] for s in used)) if used else None,
    )

    def skip(why: str) -> Attempt:
        base.reason, base.seconds = why, time.perf_counter() - t0
        return base

    if not series:
        return skip("not enough data: no ticks in the range read")
    if not used:
        longest = max((len(s) for s in series), default=0)
        return skip(
            f"not enough data: no symbol has {need} ticks (a {config.window}-tick window, "
            f"AR({AR_ORDER}) before a {rc.eval_fraction:.0%} evaluation slice of at least "
            f"{MIN_EVAL_FORECASTS} forecasts); {len(series)} symbol(s), longest {longest}"
        )
    tc = rc.train_config()
    init = None if rc.from_scratch else Init(champion.params, champion.stats)
    try:
        result = fit(used, config, tc, init=init)
        ev_champ = evaluate(used, champion.params, config, champion.stats, tc)
        ev_chall = evaluate(used, result.model.params(), config, result.stats, tc)
    except (DataError, ValueError) as e:  # a split or a window that does not fit the data
        return skip(f"not enough data: {e}")
    base.challenger, base.champion_eval, base.challenger_eval = result, ev_champ, ev_chall
    base.val_start_ms, base.eval_start_ms = result.split.val_start, result.split.test_start
    rep_c, rep_n = ev_champ.report, ev_chall.report
    q_c, q_n = _pooled(ev_champ), _pooled(ev_chall)
    rw = q_n.summary()["ewma_rw"]
    base.scores = {
        "champion": {**rep_c["model"]["stateful"], **_scale_free_scores(q_c)},
        "challenger": {**rep_n["model"]["stateful"], **_scale_free_scores(q_n)},
        "persistence": {**rep_n["persistence"], "log_rmse": rw["log_rmse"]},
        "ar60": rep_n["ar60"],
        "ewma_rw": {
            **rep_n["ewma_rw"],
            "log_rmse": rw["log_rmse"],
            "log_interval_score": rw["interval_score"],
            "log_interval_width": rw["interval_width"],
        },
    }
    base.n_eval = int(rep_n["n_test"])
    trained_until = champion.metadata.get("data", {}).get("test_start_ms")
    base.champion_overlap = trained_until is not None and trained_until > base.eval_start_ms
    c_err, n_err = q_c.error_ratio, q_n.error_ratio
    base.improvement = 1.0 - n_err / c_err if c_err > 0 else None
    promote, why = decide_scale_free(q_c, q_n, rc.margin)
    base.outcome, base.reason = ("promoted" if promote else "rejected"), why
    base.seconds = time.perf_counter() - t0
    return base


def _pooled(ev: Evaluation) -> Quality:
    return sum((p.quality for p in ev.per_symbol if p.quality is not None), Quality())


def _scale_free_scores(q: Quality) -> dict[str, float]:
    m = q.summary()["model"]
    return {
        "error_ratio": q.error_ratio,
        "interval_score_ratio": q.interval_score_ratio,
        "log_rmse": m["log_rmse"],
        "log_interval_score": m["interval_score"],
        "log_interval_width": m["interval_width"],
    }


# --------------------------------------------------------------------- registry bookkeeping
def _rmse_scores(a: Attempt) -> dict[str, float]:
    return {k: float(v["rmse"]) for k, v in a.scores.items()}


def save_challenger(
    registry: Registry, a: Attempt, attempt_id: str, source: str, rc: RetrainConfig
) -> str | None:
    """Store the challenger as a new registry version (promoted or not); its metadata holds
    the parent version, the data range and the scores. None when there is no challenger."""
    if a.challenger is None:
        return None
    extra = {
        "parent": a.champion_version,
        "data": {
            "source": source,
            "symbols": a.symbols,
            "n_ticks": a.n_ticks,
            "first_ts_ms": a.first_ts_ms,
            "last_ts_ms": a.last_ts_ms,
            "val_start_ms": a.val_start_ms,
            "test_start_ms": a.eval_start_ms,  # trained on nothing from here on
        },
        "scores": _rmse_scores(a),
        "retrain": {
            "attempt": attempt_id,
            "outcome": a.outcome,
            "reason": a.reason,
            "margin": rc.margin,
            "from_scratch": rc.from_scratch,
            "n_eval": a.n_eval,
        },
        "train": {
            **describe(a.challenger),
            "loss": rc.train.loss,
            "seed": rc.train.seed,
            "max_steps": rc.train.max_steps,
            "learning_rate": rc.train.learning_rate,
        },
    }
    return registry.add(a.challenger.model, a.challenger.stats, extra)


def prune(registry: Registry, keep: int) -> list[str]:
    """Remove the oldest versions beyond the newest `keep` that were never champion; the
    champion and every version named in a change of champion stay. Returns the removed versions."""
    protected = {registry.champion()}
    for h in registry.changes():
        protected |= {h.get("version"), h.get("previous")}
    metas = [m for m in registry.versions() if m.get("version") not in protected]
    metas.sort(key=lambda m: (str(m.get("created", "")), str(m["version"])))
    drop = [str(m["version"]) for m in metas[: max(len(metas) - keep, 0)]]
    for v in drop:
        registry.remove(v)
    return drop


def attempt_record(
    a: Attempt,
    *,
    attempt_id: str,
    challenger_version: str | None,
    since_ms: int | None,
    until_ms: int | None,
    plot_path: str | None,
    rc: RetrainConfig,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The attempts.jsonl line of an attempt (JSON-ready)."""
    return {
        "attempt": attempt_id,
        "time_ms": int(time.time() * 1000),
        "champion": a.champion_version,
        "challenger": challenger_version,
        "outcome": a.outcome,
        "reason": a.reason,
        "data": {
            "since_ms": since_ms,
            "until_ms": until_ms,
            "first_ts_ms": a.first_ts_ms,
            "last_ts_ms": a.last_ts_ms,
            "val_start_ms": a.val_start_ms,
            "eval_start_ms": a.eval_start_ms,
        },
        "n_ticks": a.n_ticks,
        "symbols": a.symbols,
        "dropped_symbols": a.dropped_symbols,
        "n_eval": a.n_eval,
        "scores": a.scores,
        "improvement": a.improvement,
        "margin": rc.margin,
        "from_scratch": rc.from_scratch,
        "champion_trained_on_eval_slice": a.champion_overlap,
        "duration_s": round(a.seconds, 3),
        "plot": plot_path,
        **(extra or {}),
    }


# --------------------------------------------------------------------- report
