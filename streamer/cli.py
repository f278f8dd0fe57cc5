"""The `tickcast` command.

tickcast run                      the main job on its embedded default: local broker, replay
                                  of bundled real data, serve, websocket feed and dashboard
tickcast watch SYM...             print live forecasts from the websocket feed
tickcast loadtest                 drive a running tickcast, report throughput and latency
tickcast report                   evaluate every bundled model on its data (tables + plots)
tickcast train --data D --out M   fit a model on a bundled data set or a CSV
tickcast evaluate --data D [--model M] [--json] [--plot out.png]
tickcast datasets                 list the bundled real series
tickcast bundle                   retrain the models that ship with tickcast
tickcast kafka up|down|status     a local Apache Kafka broker (KRaft) on 127.0.0.1
tickcast serve                    the stream engine: ticks in, forecasts out (Kafka)
tickcast replay --data D          publish a series as ticks (--synthetic S: random walks)
tickcast retrain [--since 2h]     fine-tune the registry's champion on recent ticks, promote
                                  the challenger if it wins by --margin (--every 30m: loop)
tickcast models list|promote V|rollback   the model registry's versions and champion

Stream settings come from flags or TICKCAST_* environment variables (`--help` of each).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["main"]

BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "model" / "bundled"


def _bundled_model(data: str) -> Path | None:
    p = BUNDLED_MODELS / data
    return p if (p / "metadata.json").exists() else None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        help="time budget of each phase, fit and refit (default 240)",
    )
    t.add_argument("--batch-size", type=int, default=32, help="segments per step (default 32)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace) -> int:
    from model import checkpoint, data
    from model.config import ModelConfig, TrainConfig
    from model.features import auto_features
    from model.train import describe, fit, training_part

    series = data.load(args.data)
    tc = TrainConfig(
        seed=args.seed, loss=args.loss, learning_rate=args.lr, batch_size=args.batch_size,
        max_steps=args.max_steps, max_seconds=args.max_seconds, progress=not args.no_progress,
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
        ns = argparse.Namespace(data=args.data, model=args.out, json=False, plot=None)
        return _evaluate(ns)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model import checkpoint, data
    from model.config import TrainConfig
    from model.evaluate import evaluate, format_table, plot

    series = data.load(args.data)
    model_dir = args.model or _bundled_model(args.data)
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
            f"{_iso(trained_until)}, after this test split starts ({_iso(test_from)}); "
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
        print(json.dumps(report))
    else:
        print(f"{args.data} with model {pred.version} ({model_dir})")
        print(format_table(report))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from model.data import BUNDLED

    for name, desc in BUNDLED.items():
        mark = "model bundled" if _bundled_model(name) else "no model"
        print(f"{name:8s} {desc}  [{mark}]")
    return 0


def _run(args: argparse.Namespace) -> int:
    """The whole product on its embedded default: a local Kafka broker, a looped replay of a
    bundled real series, `serve` with the bundled model, the websocket feed and dashboard.
    Ctrl-C stops everything."""
    from streamer.app import run_loop
    from streamer.embedded import embedded
    from streamer.settings import from_args

    settings = from_args(args)
    _logging(settings.log_level)
    if args.rate <= 0:
        raise ValueError("--rate must be > 0")
    predictor = _load_model(settings.model)
    return run_loop(
        settings, embedded(settings, predictor, data=args.data, rate=args.rate, passes=args.passes)
    )


def _watch(args: argparse.Namespace) -> int:
    """Print live forecasts from the websocket feed (the protocol's reference client)."""
    from streamer.watch import main as watch_main

    return watch_main(args.url, args.symbols, args.token, args.count, args.json)


def _loadtest(args: argparse.Namespace) -> int:
    """Drive a running tickcast: produce ticks for S symbols at a rate (or a ramp of rates)
    to its ticks topic, follow them with M websocket clients on its feed, and report
    throughput, tick-to-client latency, conflation, losses and errors. Exit 1 if anything
    was lost or erred."""
    from streamer import loadtest
    from streamer.settings import from_args

    settings = from_args(args)
    if args.ramp:
        rates = loadtest.parse_ramp(args.ramp)
        step_s = args.step_seconds
    else:
        rates, step_s = (float(args.rate),), float(args.seconds)
    plan = loadtest.Plan(
        bootstrap=settings.kafka_bootstrap, ticks_topic=settings.ticks_topic, feed_url=args.feed,
        token=args.token, symbols=args.symbols, rates=rates, step_s=step_s,
        warmup_s=args.warmup, clients=args.clients, per_client=args.per_client, procs=args.procs,
        drain_s=args.drain, max_ticks=args.max_ticks, slo_ms=args.slo_ms, seed=args.seed,
        metrics_url=args.metrics,
    )  # fmt: skip
    return loadtest.main(plan, args.json, args.plots, progress=not args.quiet)


def _report(args: argparse.Namespace) -> int:
    """Every bundled model evaluated on its bundled series, with plots."""
    from model.data import BUNDLED

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    reports: dict[str, dict[str, Any]] = {}
    for name in BUNDLED:
        if _bundled_model(name) is None:
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
    parser = build_parser()
    for name in names:
        ns = parser.parse_args(["train", "--data", name, "--out", str(BUNDLED_MODELS / name)])
        if (rc := _train(ns)) != 0:
            return rc
    return 0


def _load_model(name: str) -> Any:
    from model import checkpoint

    path = _bundled_model(name) or Path(name)
    return checkpoint.load(path)


def _logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    quiet = max(logging.WARNING, logging.getLevelName(level.upper()))
    for noisy in ("aiokafka", "jax", "absl", "orbax"):
        logging.getLogger(noisy).setLevel(quiet)


def _serve(args: argparse.Namespace) -> int:
    """Consume ticks, publish one forecast per tick (exactly-once by default)."""
    from streamer.app import serve
    from streamer.settings import from_args

    settings = from_args(args)
    _logging(settings.log_level)
    predictor = _load_model(settings.model)
    return serve(settings, predictor)


def _replay(args: argparse.Namespace) -> int:
    """Publish a bundled series, a CSV, or synthetic random walks as ticks."""
    import asyncio

    from model import data
    from streamer import replay
    from streamer.app import ensure_topics
    from streamer.settings import from_args

    settings = from_args(args)
    if args.synthetic:
        total = args.synthetic * args.ticks_per_symbol
        start = args.start_ms if args.start_ms is not None else int(time.time() * 1000)
        ticks = replay.synthetic(args.synthetic, total, seed=args.seed, start_ms=start)
        label = f"{args.synthetic} synthetic symbols"
    else:
        series = data.load(args.data)
        total = sum(len(s) for s in series)
        ticks = replay.interleave(series)
        label = f"{args.data} ({len(series)} symbols)"
    rate = None if args.rate == "max" else float(args.rate)
    if rate is not None and rate <= 0:
        raise ValueError("--rate must be > 0 or 'max'")

    async def go() -> replay.ReplayResult:
        await ensure_topics(settings)
        return await replay.publish(
            settings.kafka_bootstrap,
            settings.ticks_topic,
            ticks,
            rate=rate,
            total=total,
            progress=not args.quiet,
        )

    res = asyncio.run(go())
    print(f"replayed {res.sent} ticks of {label} in {res.seconds:.1f} s ({res.rate:,.0f}/s)")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    """Fine-tune the champion on recent ticks and promote the challenger if it wins.

    Reads a time range of the ticks topic, fits a challenger (fine-tuned from the registry's
    champion, or --from-scratch) on all but the most recent --eval-fraction, scores both
    walk-forward on that slice beside persistence, AR(60) and an EWMA random walk, promotes
    (and announces on the models topic) if the challenger wins by --margin on the scale-free
    error ratio to persistence (within it: on the interval score), and records the
    attempt, the challenger and a plot in the registry either way. An empty registry is
    seeded from --model. Exit status (one-shot): 0 promoted or rejected, 3 skipped (not
    enough data), 2 refused input; with --every it loops until SIGINT/SIGTERM and exits 0.
    With --on-drift it tails the forecasts topic and also runs when the live scale-free
    quality drifts (at most once per --drift-cooldown); each run logs why it started.
    """
    from streamer import retrain
    from streamer.settings import from_args

    settings = from_args(args)
    _logging(settings.log_level)
    if args.since and args.since_ms is not None:
        raise ValueError("give --since or --since-ms, not both")
    opts = retrain.options_from_args(args)
    if args.on_drift:
        from streamer import ondrift

        return ondrift.loop_on_drift(
            settings, opts, every_s=retrain.parse_duration(args.every) if args.every else None,
            cooldown_s=retrain.parse_duration(args.drift_cooldown), metrics_host=args.metrics_host,
            metrics_port=args.metrics_port, max_runs=args.max_runs,
        )  # fmt: skip
    if args.every:
        every = retrain.parse_duration(args.every)
        return retrain.loop(settings, opts, every, metrics_host=args.metrics_host,
                            metrics_port=args.metrics_port, max_runs=args.max_runs)  # fmt: skip
    try:
        record = retrain.run_once(settings, opts)
    except retrain.RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return retrain.exit_code(record)


def _models(args: argparse.Namespace) -> int:
    """List the registry's versions, promote one, or roll back to the previous champion;
    promote and rollback announce the new champion on the models topic."""
    from model.registry import Registry, RegistryError
    from streamer import retrain
    from streamer.settings import from_args

    settings = from_args(args)
    try:
        if args.action == "list":
            print(retrain.models_table(Registry(settings.registry)))
            return 0
        if args.action == "promote":
            if not args.version:
                raise ValueError("models promote needs a VERSION")
            rec = retrain.models_promote(settings, args.version)
        else:
            rec = retrain.models_rollback(settings)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"champion: {rec['version']} (was {rec['previous']}; {rec['reason']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickcast",
        description="Streaming real-time price forecaster: a stateful Flax LSTM per symbol.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from streamer import kafka_local, settings

    p = sub.add_parser(
        "run",
        help="main job: broker + replay + serve + dashboard, on the bundled data and model",
        description=_run.__doc__,
    )
    p.add_argument("--data", default="stocks", help="bundled series to replay (default stocks)")
    p.add_argument("--rate", type=float, default=20.0, help="ticks/s replayed (default 20)")
    p.add_argument("--passes", type=int, help="replay the series this many times (default: loop)")
    settings.add_arguments(
        p,
        [n for n in settings.NAMES
         if n not in ("kafka_bootstrap", "replication", "instance", "group")],
    )  # fmt: skip
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "loadtest",
        help="drive a running tickcast (ticks in, websocket clients out) and report capacity",
        description=_loadtest.__doc__,
    )
    g = p.add_argument_group("load")
    g.add_argument("--symbols", type=int, default=100, help="symbols ticking (default 100)")
    g.add_argument("--rate", type=float, default=1000.0, help="ticks/s (default 1000)")
    g.add_argument("--seconds", type=float, default=20.0,
                   help="scored seconds at --rate (default 20)")  # fmt: skip
    g.add_argument("--ramp", metavar="START:STOP:STEP",
                   help="rates to step through, ticks/s (instead of --rate)")  # fmt: skip
    g.add_argument("--step-seconds", type=float, default=10.0,
                   help="seconds per ramp step (default 10)")  # fmt: skip
    g.add_argument("--warmup", type=float, default=3.0, help="unscored seconds first (default 3)")
    g.add_argument("--max-ticks", type=int, default=5_000_000,
                   help="stop producing after this many (default 5,000,000)")  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="prices and subscriptions (default 0)")
    c = p.add_argument_group("clients")
    c.add_argument("--feed", default="ws://127.0.0.1:8765/ws",
                   help="feed URL (default ws://127.0.0.1:8765/ws)")  # fmt: skip
    c.add_argument("--token", default=os.environ.get("TICKCAST_FEED_TOKEN") or None,
                   help="bearer token [TICKCAST_FEED_TOKEN]")  # fmt: skip
    c.add_argument("--clients", type=int, default=10, help="websocket clients (default 10)")
    c.add_argument("--per-client", type=int, default=10,
                   help="random symbols each client follows; 0: all (default 10)")  # fmt: skip
    c.add_argument("--procs", type=int, default=1,
                   help="worker processes for the clients (default 1)")  # fmt: skip
    c.add_argument("--drain", type=float, default=10.0,
                   help="seconds to wait for the last forecasts (default 10)")  # fmt: skip
    o = p.add_argument_group("output")
    o.add_argument("--slo-ms", type=float, default=50.0,
                   help="p99 bound for the sustained rate (default 50)")  # fmt: skip
    o.add_argument("--metrics", metavar="URL",
                   help="the server's /metrics URL: its latency breakdown")  # fmt: skip
    o.add_argument("--json", metavar="FILE", help="write the report as JSON")
    o.add_argument("--plots", metavar="DIR", help="write latency, histogram, throughput PNGs")
    o.add_argument("--quiet", action="store_true", help="no live progress lines")
    settings.add_arguments(p, ["kafka_bootstrap", "ticks_topic"])
    p.set_defaults(func=_loadtest)

    p = sub.add_parser(
        "report",
        help="evaluate every bundled model on its bundled data, with plots",
        description=_report.__doc__,
    )
    p.add_argument("--out", default="out", help="folder for the plots (default ./out)")
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "watch", help="print live forecasts from the feed", description=_watch.__doc__
    )
    p.add_argument("symbols", nargs="+", metavar="SYM", help="symbols to follow, or '*' for all")
    p.add_argument(
        "--url", default="ws://127.0.0.1:8765/ws", help="feed URL (default ws://127.0.0.1:8765/ws)"
    )
    p.add_argument("--token", default=os.environ.get("TICKCAST_FEED_TOKEN") or None,
                   help="bearer token [TICKCAST_FEED_TOKEN]")  # fmt: skip
    p.add_argument("--count", type=int, help="exit after this many forecasts")
    p.add_argument("--json", action="store_true", help="print every message as JSON")
    p.set_defaults(func=_watch)

    p = sub.add_parser(
        "train",
        help="train a model on a bundled data set or a CSV",
        description="Fit on the training split (first 70%%), stop early on validation (next "
        "10%%), calibrate the interval on validation, refit on both, save to --out.",
    )
    p.add_argument(
        "--data", required=True, help="bundled name (see `tickcast datasets`) or CSV path"
    )
    p.add_argument("--out", required=True, help="model directory to write (replaced if present)")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split afterwards")
    _add_train_args(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="walk-forward test-split scores vs persistence and AR(60)",
                       description="One-step-ahead over the test split (last 20%%), through the "
                       "carried-state step (live) and the 60-step window (tutorial).")  # fmt: skip
    p.add_argument("--data", required=True, help="bundled name or CSV path")
    p.add_argument("--model", help="model directory (default: the bundled model of --data)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--plot", metavar="PNG", help="write real vs predicted with the 90%% band")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("datasets", help="list the bundled real series")
    p.set_defaults(func=_datasets)

    p = sub.add_parser("bundle", help="retrain the models that ship with tickcast (minutes each)")
    p.add_argument("names", nargs="*", help="bundled data sets (default: all)")
    p.set_defaults(func=_bundle)

    kafka_local.add_cli(sub)

    p = sub.add_parser("serve", help="run the stream engine", description=_serve.__doc__)
    settings.add_arguments(p, settings.NAMES)  # serve takes every setting
    p.set_defaults(func=_serve)

    p = sub.add_parser("replay", help="publish a series as ticks", description=_replay.__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="bundled name (see `tickcast datasets`) or CSV path")
    src.add_argument("--synthetic", type=int, metavar="S", help="S random-walk symbols")
    p.add_argument(
        "--ticks-per-symbol", type=int, default=1000, help="with --synthetic (default 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="with --synthetic (default 0)")
    p.add_argument("--start-ms", type=int, help="with --synthetic: first tick time (default: now)")
    p.add_argument("--rate", default="max", help="ticks per second, or 'max' (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    settings.add_arguments(p, ["kafka_bootstrap", "ticks_topic", "partitions", "replication"])
    p.set_defaults(func=_replay)

    p = sub.add_parser("retrain", help="fine-tune the champion on recent ticks; champion vs "
                       "challenger", description=_retrain.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    g = p.add_argument_group("data (a range of the ticks' own ts; default: all retention keeps)")
    g.add_argument("--since", metavar="DURATION", help="ticks from now minus this (2h, 30m, 1d)")
    g.add_argument("--since-ms", type=int, metavar="MS", help="ticks with ts >= MS (epoch ms)")
    g.add_argument("--until-ms", type=int, metavar="MS", help="ticks with ts < MS (epoch ms)")
    g = p.add_argument_group("decision")
    g.add_argument(
        "--margin",
        type=float,
        default=0.01,
        help="relative improvement needed to promote, on the scale-free error ratio (within "
        "it, on the interval score) (default 0.01 = 1%%)",
    )
    g.add_argument(
        "--eval-fraction",
        type=float,
        default=0.2,
        help="most recent share of the ticks: the evaluation slice (default 0.2)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share before it for early stopping (default 0.1)",
    )
    g.add_argument(
        "--keep", type=int, default=20, help="rejected versions kept in the registry (default 20)"
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--from-scratch",
        action="store_true",
        help="fresh weights and statistics instead of fine-tuning the champion",
    )
    g.add_argument(
        "--max-steps", type=int, help="optimizer steps at most (default 600; 3000 from scratch)"
    )
    g.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="time budget of each phase, fit and refit (default 120; 0: none)",
    )
    g.add_argument("--lr", type=float, help="Adam learning rate (default 5e-4; 1e-3 from scratch)")
    g.add_argument("--batch-size", type=int, default=32, help="segments per step (default 32)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("loop")
    g.add_argument(
        "--every",
        metavar="DURATION",
        help="run again every DURATION (30m, 1h) until SIGINT/SIGTERM (default: once)",
    )
    g.add_argument(
        "--on-drift",
        action="store_true",
        help="also run when the live quality drifts (Page-Hinkley on the forecasts topic's "
        "scale-free error and interval misses); combinable with --every",
    )
    g.add_argument(
        "--drift-cooldown",
        metavar="DURATION",
        default="10m",
        help="with --on-drift: at most one drift-started run per DURATION (default 10m)",
    )
    g.add_argument("--max-runs", type=int, help="with --every: stop after this many runs")
    g.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="with --every: metrics address (default 127.0.0.1)",
    )
    g.add_argument(
        "--metrics-port",
        type=int,
        default=9301,
        help="with --every: Prometheus metrics port (default 9301; 0: none)",
    )
    settings.add_arguments(p, ["kafka_bootstrap", "ticks_topic", "forecasts_topic",
                               "models_topic", "registry", "model", "replication",
                               "log_level"])  # fmt: skip
    p.set_defaults(func=_retrain)

    p = sub.add_parser("models", help="the model registry: list, promote VERSION, rollback",
                       description=_models.__doc__)  # fmt: skip
    p.add_argument("action", choices=("list", "promote", "rollback"))
    p.add_argument("version", nargs="?", help="with promote: the version to make champion")
    settings.add_arguments(p, ["kafka_bootstrap", "models_topic", "registry", "replication"])
    p.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from model.checkpoint import CheckpointError
    from model.data import DataError

    try:
        return int(args.func(args))
    except (DataError, CheckpointError, ValueError, FileExistsError) as e:  # say what, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
