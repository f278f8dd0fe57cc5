"""Fit the forecaster with optax: stateful truncated BPTT, early stopping, calibrated intervals.

How the carried-state step is made at least as good as the windowed pass: the live server
warms a symbol from its last `window` ticks and then carries `(h, c)` for as long as the
stream runs. We train for exactly that. Each lane of a batch is a contiguous segment of
`chunks * window` training rows starting at a random point; the network runs through it
one window-long chunk at a time, carrying the state from chunk to chunk (gradients are
truncated at chunk borders) and taking a loss at every step. So the model learns both from
a zero state (the first chunk, which is what the windowed pass sees) and from long carried
states (the later chunks, which is what serving sees). Validation scores the carried-state
pass over the whole validation split, warmed from the window before it: the live way.
`tickcast evaluate` reports both passes, so the claim is checked on every data set.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from model.config import ModelConfig, TrainConfig
from model.data import Series, Split, split_times
from model.features import Z90, FeatureStats, featurize, fit_stats, targets
from model.lstm import LSTMForecaster, LSTMState, Params, forward_fn, load_params_into, params_of

__all__ = [
    "FitResult",
    "Init",
    "Prepared",
    "fit",
    "prepare",
    "sequence_outputs",
    "training_part",
]


class Init(NamedTuple):
    """Where fine-tuning starts: a fitted model's parameters and its feature statistics.

    The statistics are kept as they are (the serving features must not change), and the
    config passed to `fit` must be the one the parameters were built for."""

    params: Params
    stats: FeatureStats


@dataclass
class Prepared:
    """A data set turned into model inputs; every symbol keeps its own rows."""

    series: list[Series]
    split: Split
    stats: FeatureStats
    x: list[np.ndarray]  # per symbol `[time, features]` float32
    y: list[np.ndarray]  # per symbol `[time]`: next standardized return (NaN at the end)
    bounds: list[tuple[int, int]]  # per symbol: row where validation starts, where test starts


@dataclass
class FitResult:
    model: LSTMForecaster
    stats: FeatureStats
    split: Split
    train_seconds: float
    steps: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def training_part(series: list[Series], tc: TrainConfig) -> list[Series]:
    """The training split of every symbol that has one (at least 2 rows)."""
    split = split_times(series, tc.val_fraction, tc.test_fraction)
    out = []
    for s in series:
        v, _ = split.indices(s)
        if v >= 2:
            vol = None if s.volume is None else s.volume[:v]
            out.append(dataclasses.replace(s, ts=s.ts[:v], price=s.price[:v], volume=vol))
    return out


def prepare(
    series: list[Series], config: ModelConfig, tc: TrainConfig, stats: FeatureStats | None = None
) -> Prepared:
    """Split chronologically, fit feature statistics on the training part, featurize."""
    split = split_times(series, tc.val_fraction, tc.test_fraction)
    bounds = [split.indices(s) for s in series]
    if stats is None:
        stats = fit_stats(training_part(series, tc), window=config.window)
    x = [featurize(config, stats, s) for s in series]
    y = [targets(stats, s) for s in series]
    return Prepared(series, split, stats, x, y, bounds)


def _loss(kind: str, out: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean loss. out `[batch, time, 2]`, y and mask `[batch, time]`."""
    mean, scale = out[..., 0], out[..., 1]
    y = jnp.where(mask, y, 0.0)
    if kind == "mse":
        # MSE trains the mean; the scale is still fitted by NLL around a frozen mean so that
        # every forecast keeps an interval.
        nll = jnp.log(scale) + 0.5 * ((y - jax.lax.stop_gradient(mean)) / scale) ** 2
        per = (y - mean) ** 2 + nll
    else:
        per = jnp.log(scale) + 0.5 * ((y - mean) / scale) ** 2
    return jnp.sum(jnp.where(mask, per, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


@partial(jax.jit, static_argnames=("optimizer", "kind", "dropout"))
def _train_chunk(
    params: Params,
    opt_state: optax.OptState,
    state: LSTMState,
    x: jax.Array,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    optimizer: optax.GradientTransformation,
    kind: str,
    dropout: float,
) -> tuple[Params, optax.OptState, LSTMState, jax.Array]:
    """One optimizer step on a chunk `[batch, time, features]`, starting from `state`."""

    def loss_fn(p: Params) -> tuple[jax.Array, LSTMState]:
        new_state, out = forward_fn(p, x, state, dropout, key)
        return _loss(kind, out, y, mask), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_state, loss


@jax.jit
def _sequence_outputs(params: Params, x: jax.Array) -> jax.Array:
    return forward_fn(params, x)[1]


def sequence_outputs(params: Params, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Carried-state outputs `[time, 2]` for each sequence, all from a zero state, batched."""
    if not xs:
        return []
    t_max = max(len(a) for a in xs)
    t_pad = 1 << max(t_max - 1, 0).bit_length()  # few distinct shapes across calls
    batch = np.zeros((len(xs), t_pad, xs[0].shape[1]), np.float32)
    for i, a in enumerate(xs):
        batch[i, : len(a)] = a
    out = np.asarray(_sequence_outputs(params, batch))
    return [out[i, : len(a)] for i, a in enumerate(xs)]


def _eval_slices(prep: Prepared, window: int, part: str) -> list[tuple[int, int, int, int]]:
    """Per symbol (index, run_from, score_from, score_to) for a carried-state pass.

    Forecasts made at rows [score_from, score_to) target the rows after them, which lie in
    `part`; the pass starts `window` rows before the first so it is warmed the live way.
    """
    out = []
    for i, (v, t) in enumerate(prep.bounds):
        n = len(prep.series[i])
        lo, hi = (v, t) if part == "val" else (t, n)
        score_from, score_to = max(lo - 1, 0), hi - 1
        if score_to - score_from < 1:
            continue
        out.append((i, max(score_from - window + 1, 0), score_from, score_to))
    return out


def carried_outputs(
    params: Params, prep: Prepared, window: int, part: str
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """Carried-state (mean, scale) `[n, 2]` and targets `[n]` over a split, pooled."""
    sl = _eval_slices(prep, window, part)
    outs = sequence_outputs(params, [prep.x[i][a:b] for i, a, _, b in sl])
    o = np.concatenate([out[s - a :] for out, (_, a, s, _) in zip(outs, sl, strict=True)])
    y = np.concatenate([prep.y[i][s:b] for i, _, s, b in sl])
    return o, y, sl


MIN_MOVING = 0.05  # share of steps a symbol's price must change on to calibrate intervals


def _moving(prep: Prepared, sl: list[tuple[int, int, int, int]]) -> np.ndarray:
    """`[n]` bool over `carried_outputs`' points: those of symbols whose price changed on at
    least `MIN_MOVING` of their steps there. The 90% interval is calibrated on these only:
    a constant or pegged symbol (a stablecoin, a halted stock) has errors of ~0 that would
    pull the pooled quantile down and make every other symbol's interval too narrow."""
    keep = []
    for i, _, s, b in sl:
        p = prep.series[i].price
        moved = float(np.mean(p[s + 1 : b + 1] != p[s:b])) if b > s else 0.0
        keep.append(np.full(b - s, moved >= MIN_MOVING))
    return np.concatenate(keep) if keep else np.zeros(0, bool)


def _nll(o: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.log(o[:, 1]) + 0.5 * ((y - o[:, 0]) / o[:, 1]) ** 2))


def _segments(
    prep: Prepared, rng: np.random.Generator, batch: int, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample `batch` training segments `[batch, length, ...]` with a mask for short series."""
    usable = np.array([max(v - 1, 0) for v, _ in prep.bounds])  # rows whose target is in train
    probs = usable / usable.sum()
    f = prep.x[0].shape[1]
    xb = np.zeros((batch, length, f), np.float32)
    yb = np.zeros((batch, length), np.float32)
    mb = np.zeros((batch, length), bool)
    for k, i in enumerate(rng.choice(len(usable), size=batch, p=probs)):
        start = int(rng.integers(0, max(usable[i] - length, 0) + 1))
        stop = min(start + length, usable[i])
        xb[k, : stop - start] = prep.x[i][start:stop]
        yb[k, : stop - start] = prep.y[i][start:stop]
        mb[k, : stop - start] = True
    return xb, yb, mb


def _train_loop(
    prep: Prepared,
    config: ModelConfig,
    tc: TrainConfig,
    max_steps: int,
    validate: bool,
    t0: float,
    start: Params | None = None,
) -> tuple[Params, int, float, list[dict[str, float]]]:
    """Run optimizer steps from a fresh seeded initialisation (or from `start`, with a fresh
    Adam state).

    With `validate`, score the validation split every `tc.eval_every` steps and stop after
    `tc.patience` scores without improvement; returns the best parameters, the step they
    were reached at, their validation NLL and the history. Without it, run `max_steps`.
    From `start`, the starting weights are scored first (step 0), so fine-tuning that never
    improves on validation returns them unchanged.
    """
    if start is None:
        params = params_of(LSTMForecaster(config, rngs=nnx.Rngs(params=tc.seed)))
    else:
        params = jax.tree.map(jnp.asarray, start)
    optimizer = optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(tc.learning_rate, weight_decay=tc.weight_decay)
        if tc.weight_decay > 0
        else optax.adam(tc.learning_rate),
    )
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(tc.seed)
    key = jax.random.key(tc.seed + 1)
    w, chunk = config.window, tc.bptt or config.window
    best: tuple[float, Params, int] = (np.inf, params, 0)
    bad = step = 0
    history: list[dict[str, float]] = []
    if validate and start is not None:
        o, y, _ = carried_outputs(params, prep, w, "val")
        best = (_nll(o, y), params, 0)
        history.append({"step": 0, "train_loss": float("nan"), "val_nll": best[0]})
    desc = "train" if validate else "refit on train+validation"
    bar = tqdm(total=max_steps, desc=desc, unit="step", disable=not tc.progress, leave=False)
    running = np.nan
    while step < max_steps and bad < tc.patience:
        if tc.max_seconds is not None and time.perf_counter() - t0 > tc.max_seconds:
            break
        xb, yb, mb = _segments(prep, rng, tc.batch_size, tc.chunks * chunk)
        state = LSTMState(*(jnp.zeros((config.layers, tc.batch_size, config.units)),) * 2)
        for k in range(tc.chunks):
            sl = slice(k * chunk, (k + 1) * chunk)
            if step >= max_steps or not mb[:, sl].any():
                break
            key, sub = jax.random.split(key)
            params, opt_state, state, loss = _train_chunk(
                params, opt_state, state, xb[:, sl], yb[:, sl], mb[:, sl], sub,
                optimizer=optimizer, kind=tc.loss, dropout=config.dropout,
            )  # fmt: skip
            step += 1
            running = float(loss) if np.isnan(running) else 0.95 * running + 0.05 * float(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", best_val=f"{best[0]:.4f}")
            if validate and (step % tc.eval_every == 0 or step == max_steps):
                o, y, _ = carried_outputs(params, prep, w, "val")
                val = _nll(o, y)
                history.append({"step": step, "train_loss": running, "val_nll": val})
                if val < best[0] - 1e-4:
                    best, bad = (val, params, step), 0
                else:
                    bad += 1
    bar.close()
    if not validate or not np.isfinite(best[0]):
        return params, step, float("nan"), history
    return best[1], best[2], best[0], history


def fit(
    series: list[Series],
    config: ModelConfig,
    tc: TrainConfig = TrainConfig(),  # noqa: B008 - frozen dataclass, safe default
    init: Init | None = None,
) -> FitResult:
    """Train a forecaster: early stopping on validation, then (by default) a refit.

    1. Train on the training split; keep the weights with the best validation NLL.
    2. Calibrate the interval on validation (never on test): scale the predicted spread so
       90% of validation outcomes fall inside the central 90% band.
    3. With `tc.refit`, train again from the same seed on training + validation for the
       number of steps step 1 found best. The most recent data is what matters most for the
       test period that follows it; without the refit a model never sees the validation
       months that AR baselines fitted on everything before the test split do see.

    With `init` (fine-tuning), both phases start from `init.params` instead of a seeded
    initialisation, with a fresh Adam state, and the features are scaled with `init.stats`
    (only the interval scale is calibrated again); `config` must be the one `init.params`
    was built for. The starting weights are scored on validation first, so the result is
    never worse on validation than where it started (with 0 steps it is those weights).

    Seeded and reproducible: the same data, configs and seed give the same weights.
    """
    t0 = time.perf_counter()
    start: Params | None = None
    if init is not None:
        want = params_of(LSTMForecaster(config, rngs=nnx.Rngs(params=0)))
        shapes = [np.shape(a) for a in jax.tree.leaves(want)]
        if [np.shape(a) for a in jax.tree.leaves(init.params)] != shapes:
            raise ValueError("init.params do not have the shapes of the config: fine-tuning "
                             "needs the champion's own config")  # fmt: skip
        start = init.params
    prep = prepare(series, config, tc, stats=None if init is None else init.stats)
    if sum(max(v - 1, 0) for v, _ in prep.bounds) < config.window:
        raise ValueError("too few training rows: need at least one window of training data")
    params, best_step, best_val, history = _train_loop(
        prep, config, tc, tc.max_steps, True, t0, start
    )
    if not np.isfinite(best_val):  # never validated (tiny max_steps): keep the last weights
        o, y, _ = carried_outputs(params, prep, config.window, "val")
        best_val = _nll(o, y)
    o, y, sl = carried_outputs(params, prep, config.window, "val")
    z = np.abs(y - o[:, 0]) / o[:, 1]
    moving = _moving(prep, sl)
    if moving.sum() >= 20:  # a constant or pegged symbol's ~0 errors would shrink them all
        z = z[moving]
    interval_scale = float(np.quantile(z, 0.9) / Z90) if len(z) >= 20 else 1.0
    steps = best_step
    if tc.refit and best_step > 0:
        whole = dataclasses.replace(prep, bounds=[(t, t) for _, t in prep.bounds])
        params, steps, _, _ = _train_loop(
            whole, config, tc, best_step, False, time.perf_counter(), start
        )
    model = LSTMForecaster(config, rngs=nnx.Rngs(params=tc.seed))
    load_params_into(model, params)
    return FitResult(
        model=model,
        stats=dataclasses.replace(prep.stats, interval_scale=interval_scale),
        split=prep.split,
        train_seconds=time.perf_counter() - t0,
        steps=steps,
        best_val_loss=float(best_val),
        history=history,
    )


def describe(result: FitResult) -> dict[str, Any]:
    """Summary of a fit for the checkpoint's metadata."""
    return {
        "train_seconds": round(result.train_seconds, 2),
        "steps": result.steps,
        "best_val_nll": result.best_val_loss,
        "history": result.history[-50:],
    }
