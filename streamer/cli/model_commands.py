"""The model commands: `tickcast train`, `evaluate`, `report`, `datasets` and `bundle`.

Each command that trains or steps a model configures JAX first (`common.jax`), and imports
`model` lazily, so `tickcast --help` stays fast. May import `model`, `streamer.timefmt` and
`streamer.cli.common`; nothing from the stream side.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from model.paths import BUNDLED_MODELS, bundled_model, resolve_model
from model.tickfile import add_read_arguments
from streamer.cli.common import Subparsers, jax
from streamer.timefmt import format_ms

__all__ = ["register"]


def register(sub: Subparsers) -> None:
    """Add report, train, evaluate, datasets and bundle to the `tickcast` subparsers."""
    p = sub.add_parser(
        "report",
        help="evaluate every bundled model on its bundled data, with plots",
        description=_report.__doc__,
    )
    p.add_argument("--out", default="out", help="folder for the plots (default ./out)")
    p.set_defaults(func=_report)

    _add_train(sub)

    p = sub.add_parser("evaluate", help="walk-forward test-split scores vs persistence and AR(60)",
                       description="One-step-ahead over the test split (last 20%), through the "
                       "carried-state step (live) and the window re-read at each step "
                                   "(tutorial).")  # fmt: skip
    p.add_argument("--data", required=True, help="bundled name or CSV path")
    p.add_argument("--model", help="model directory or a bundled model's name "
                   "(default: the bundled model of --data)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--plot", metavar="PNG", help="write real vs predicted with the 90%% band")
    add_read_arguments(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("datasets", help="list the bundled real series")
    p.set_defaults(func=_datasets)

    p = sub.add_parser("bundle", help="retrain the models that ship with tickcast (minutes each)")
    p.add_argument("names", nargs="*", help="bundled data sets (default: all)")
    p.set_defaults(func=_bundle)


def _add_train(sub: Subparsers) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a bundled data set or a CSV",
        description="Fit on the training split (first 70%), stop early on validation (next "
        "10%), calibrate the interval on validation, refit on both, save to --out.",
    )
    p.add_argument(
        "--data", required=True, help="bundled name (see `tickcast datasets`) or CSV path"
    )
    p.add_argument("--out", required=True, help="model directory to write (replaced if present)")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split afterwards")
    _add_train_args(p)
    add_read_arguments(p)
    p.set_defaults(func=_train)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "model (defaults: the tutorial's 4 x LSTM(50), dropout 0.2, window 60)"
    )
    g.add_argument("--layers", type=int, default=4, help="stacked LSTM layers (default 4)")
    g.add_argument("--units", type=int, default=50, help="units per layer (default 50)")
    g.add_argument(
        "--dropout", type=float, default=0.2, help="dropout between layers (default 0.2)"
    )
    g.add_argument(
        "--window", type=int, default=60, help="warm-up / windowed-pass length (default 60)"
    )
    g.add_argument(
        "--features",
        default="auto",
        help="comma list of ret,dlogvol,lvl,tod,dow,lags; 'auto' picks ret,lvl; dlogvol if every "
        "row has a volume; tod,dow for intraday data; lags (linear AR path) if the training "
        "returns are clearly autocorrelated (default auto)",
    )
    t = p.add_argument_group("training")
    t.add_argument(
        "--loss", choices=("nll", "mse"), default="nll", help="Gaussian NLL or MSE (default nll)"
    )
    t.add_argument(
        "--max-steps", type=int, default=3000, help="optimizer steps at most (default 3000)"
    )
    t.add_argument(
        "--max-seconds",
        type=float,
        default=240.0,
        help="time budget of each phase, fit and refit (default 240; 0: none)",
    )
    t.add_argument("--batch-size", type=int, default=32, help="segments per step (default 32)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace) -> int:
    from model import checkpoint, data
    from model.config import ModelConfig, TrainConfig
    from model.features import auto_features
    from model.tickfile import read_options
    from model.train import describe, fit, training_part

    if args.max_steps < 1:  # from scratch, no step would save an untrained model
        print(f"error: --max-steps must be at least 1, got {args.max_steps}", file=sys.stderr)
        return 2
    jax()
    series = data.load(args.data, read_options(args))
    tc = TrainConfig(
        seed=args.seed, loss=args.loss, learning_rate=args.lr, batch_size=args.batch_size,
        max_steps=args.max_steps, max_seconds=args.max_seconds or None,
        progress=not args.no_progress,
    )  # fmt: skip
    if args.features == "auto":  # chosen from the training split only
        feats = auto_features(training_part(series, tc), args.window)
    else:
        feats = tuple(args.features.split(","))
    config = ModelConfig(args.layers, args.units, args.dropout, args.window, feats)
    print(f"training on {args.data}: {len(series)} symbol(s), {sum(map(len, series))} ticks, "
          f"features {','.join(feats)}", file=sys.stderr)  # fmt: skip
    result = fit(series, config, tc)
    extra = {
        "data": {
            "source": args.data,
            "symbols": [s.symbol for s in series],
            "first_ts_ms": int(min(s.ts[0] for s in series)),
            "last_ts_ms": int(max(s.ts[-1] for s in series)),
            "val_start_ms": result.split.val_start,
            "test_start_ms": result.split.test_start,
        },
        "train": {**describe(result), "loss": tc.loss, "seed": tc.seed, "max_steps": tc.max_steps},
    }
    version = checkpoint.save(args.out, result.model, result.stats, extra, overwrite=True)
    print(
        f"saved {args.out} (version {version}) after {result.steps} steps in "
        f"{result.train_seconds:.1f} s; best validation NLL {result.best_val_loss:.4f}",
        file=sys.stderr,
    )
    if args.evaluate:
        ns = argparse.Namespace(**{**vars(args), "model": args.out, "json": False, "plot": None})
        return _evaluate(ns)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model import checkpoint, data
    from model.config import TrainConfig
    from model.evaluate import evaluate, format_table, plot
    from model.tickfile import read_options

    jax()
    series = data.load(args.data, read_options(args))
    model_dir = resolve_model(args.model) if args.model else bundled_model(args.data)
    if model_dir is None:
        print(
            f"error: no bundled model for {args.data!r}; pass --model DIR "
            f"(train one with: tickcast train --data {args.data} --out DIR)",
            file=sys.stderr,
        )
        return 2
    pred = checkpoint.load(model_dir)
    t0 = time.perf_counter()
    ev = evaluate(series, pred.params, pred.config, pred.stats, TrainConfig())
    trained_until = pred.metadata.get("data", {}).get("test_start_ms")
    test_from = int(min(p.ts[0] for p in ev.per_symbol))  # first forecast target
    overlap = trained_until is not None and trained_until > test_from
    if overlap:
        print(
            "warning: the model was trained on data up to "
            f"{format_ms(trained_until)}, after this test split starts ({format_ms(test_from)}); "
            "if the series overlap, these scores include look-ahead",
            file=sys.stderr,
        )
    report: dict[str, Any] = {
        **ev.report,
        "train_seconds": pred.metadata.get("train", {}).get("train_seconds"),
        "eval_seconds": round(time.perf_counter() - t0, 3),
        "model_version": pred.version,
        "data": args.data,
        "test_overlaps_training_period": overlap,
    }
    if args.plot:
        plot(ev, args.plot)
    if getattr(args, "collect", None) is not None:
        args.collect[args.data] = report
    if args.json:
        # Strict JSON: a score with no value (NaN: e.g. a ratio to a persistence that was
        # exact on a constant series) is null, which every JSON reader accepts.
        print(json.dumps(_json_safe(report), allow_nan=False))
    else:
        print(f"{args.data} with model {pred.version} ({model_dir})")
        print(format_table(report))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from model.data import BUNDLED

    for name, desc in BUNDLED.items():
        mark = "model bundled" if bundled_model(name) else "no model"
        print(f"{name:8s} {desc}  [{mark}]")
    return 0


def _report(args: argparse.Namespace) -> int:
    """Every bundled model evaluated on its bundled series, with plots."""
    from model.data import BUNDLED

    jax()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    reports: dict[str, dict[str, Any]] = {}
    for name in BUNDLED:
        if bundled_model(name) is None:
            continue
        png = out / f"{name}.png"
        ns = argparse.Namespace(data=name, model=None, json=False, plot=str(png), collect=reports)
        if (rc := _evaluate(ns)) != 0:
            return rc
        print()
        summary[name] = str(png)
    print(interval_table(reports))
    print("plots: " + ", ".join(summary.values()))
    return 0


def interval_table(reports: dict[str, dict[str, Any]]) -> str:
    """The model's 90% interval against the EWMA random walk's on each series' test split:
    coverage, mean width and mean Winkler score (log units), and the score ratio."""
    head = (
        f"{'series':8s} {'forecasts':>9s} {'coverage':>8s} {'RW cov.':>8s} {'width':>8s} "
        f"{'RW width':>8s} {'score':>8s} {'RW score':>8s} {'score/RW':>8s} {'err.ratio':>9s}"
    )
    lines = ["interval vs a random walk with EWMA volatility (lambda 0.94), log prices:", head]
    for name, rep in reports.items():
        q = rep["quality"]
        m, rw = q["model"], q["ewma_rw"]
        lines.append(
            f"{name:8s} {q['n']:9d} {m['coverage90']:8.3f} {rw['coverage90']:8.3f} "
            f"{m['interval_width']:8.5f} {rw['interval_width']:8.5f} {m['interval_score']:8.5f} "
            f"{rw['interval_score']:8.5f} {q['interval_score_ratio']:8.4f} {q['error_ratio']:9.4f}"
        )
    return "\n".join(lines)


def _bundle(args: argparse.Namespace) -> int:
    """Retrain the bundled models with the default settings."""
    from model.data import BUNDLED

    names = args.names or list(BUNDLED)
    jax()
    parser = argparse.ArgumentParser(prog="tickcast")
    _add_train(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for name in names:
        ns = parser.parse_args(["train", "--data", name, "--out", str(BUNDLED_MODELS / name)])
        if (rc := _train(ns)) != 0:
            return rc
    return 0


def _json_safe(o: Any) -> Any:
    """`o` with every non-finite float (NaN, ±inf) as None and numpy scalars as Python's."""
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_json_safe(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, str | bytes):  # numpy scalar
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
