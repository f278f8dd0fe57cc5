"""The registry commands: `tickcast retrain` (champion vs challenger, once or --every) and
`tickcast models` (list, promote, rollback).

`retrain` configures JAX explicitly (`common.jax`). May import `model`, `streamer.jobs`,
`streamer.settings` and `streamer.cli.common`.
"""

from __future__ import annotations

import argparse
import sys

from streamer.cli.common import Subparsers, jax, setup_logging

__all__ = ["register"]


def register(sub: Subparsers) -> None:
    """Add retrain and models to the `tickcast` subparsers."""
    from streamer import settings

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
    g.add_argument(
        "--drift-settle",
        metavar="DURATION",
        help="with --on-drift: start the run DURATION after the detection, so it trains on "
        "some ticks of the new regime (default: at once)",
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
                               "models_topic", "registry", "model", "replication_factor",
                               "log_level", "format", "ts_unit"])  # fmt: skip
    p.set_defaults(func=_retrain)

    p = sub.add_parser("models", help="the model registry: list, promote VERSION, rollback",
                       description=_models.__doc__)  # fmt: skip
    p.add_argument("action", choices=("list", "promote", "rollback"))
    p.add_argument("version", nargs="?", help="with promote: the version to make champion")
    settings.add_arguments(p, ["kafka_bootstrap", "models_topic", "registry", "replication_factor"])
    p.set_defaults(func=_models)


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
    from streamer.jobs import retrain
    from streamer.settings import from_args

    settings = from_args(args)
    setup_logging(settings.log_level)
    if args.since and args.since_ms is not None:
        raise ValueError("give --since or --since-ms, not both")
    opts = retrain.options_from_args(args)
    jax()
    if args.on_drift or args.every:
        from streamer.jobs.retrain_loop import RetrainLoop, run_loop

        return run_loop(
            RetrainLoop(
                settings, opts, every_s=retrain.parse_duration(args.every) if args.every else None,
                on_drift=args.on_drift, cooldown_s=retrain.parse_duration(args.drift_cooldown),
                settle_s=retrain.parse_duration(args.drift_settle) if args.drift_settle else 0.0,
                metrics_host=args.metrics_host, metrics_port=args.metrics_port,
                max_runs=args.max_runs,
            )
        )  # fmt: skip
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
    from streamer.jobs import registry_ops
    from streamer.settings import from_args

    settings = from_args(args)
    try:
        if args.action == "list":
            print(registry_ops.models_table(Registry(settings.registry)))
            return 0
        if args.action == "promote":
            if not args.version:
                raise ValueError("models promote needs a VERSION")
            rec = registry_ops.models_promote(settings, args.version)
        else:
            rec = registry_ops.models_rollback(settings)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"champion: {rec['version']} (was {rec['previous']}; {rec['reason']})")
    return 0
