"""The stream commands: `tickcast run`, `serve`, `replay`, `watch`, `loadtest` and `kafka`.

Every command imports what it runs lazily, so the parser stays light. `serve` and `run`
configure JAX explicitly (`common.jax`); `replay`, `watch`, `loadtest` and `kafka` never
import JAX. May import every `streamer` sub-package and `streamer.cli.common`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
import sys
import time
from pathlib import Path

from model.tickfile import add_read_arguments
from streamer.cli.common import Subparsers, jax, load_model, setup_logging
from streamer.kafka.jars import KAFKA_VERSION

__all__ = ["register"]


def register(sub: Subparsers) -> None:
    """Add run, watch, loadtest, kafka, serve and replay to the `tickcast` subparsers."""
    from streamer import settings

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
         if n not in ("kafka_bootstrap", "replication_factor", "client_id", "group_id",
                      "format", "ts_unit")],
    )  # fmt: skip
    p.set_defaults(func=_run)

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

    _add_kafka(sub)

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
    p.add_argument("--rate", default=None, type=_rate, metavar="RATE",
                   help="ticks per second (> 0), or 'max' (default)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_read_arguments(p)
    settings.add_arguments(
        p, ["kafka_bootstrap", "ticks_topic", "num_partitions", "replication_factor"]
    )
    p.set_defaults(func=_replay)


def _add_kafka(sub: Subparsers) -> None:
    p = sub.add_parser(
        "kafka",
        help="a local Kafka broker for development: up, down, status",
        description=f"A single-node Apache Kafka {KAFKA_VERSION} broker on 127.0.0.1 (KRaft), "
        "from jars Maven fetches once (deploy/kafka). `up` leaves it running in the background.",
    )
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--port", type=int, default=9092,
                   help="client port for `up`, and probed by `status` (default 9092)")  # fmt: skip
    p.add_argument(
        "--data-dir",
        help="broker data and logs (default $TICKCAST_KAFKA_DATA or ~/.local/state/tickcast/kafka)",
    )
    p.add_argument("--json", action="store_true", help="`status` as one JSON object")
    p.set_defaults(func=_kafka)


def _run(args: argparse.Namespace) -> int:
    """The whole product on its embedded default: a local Kafka broker, a looped replay of a
    bundled real series, `serve` with the bundled model, the websocket feed and dashboard.
    Ctrl-C stops everything."""
    from streamer.jobs.run_local import LocalRun
    from streamer.lifecycle import run_service
    from streamer.settings import from_args

    settings = from_args(args)
    setup_logging(settings.log_level)
    if args.rate <= 0:
        raise ValueError("--rate must be > 0")
    jax(compile_cache=True)
    loaded = load_model(settings.model)
    run = LocalRun(settings, loaded, data=args.data, rate=args.rate, passes=args.passes)
    return run_service(run, use_uvloop=settings.uvloop)


def _watch(args: argparse.Namespace) -> int:
    """Print live forecasts from the websocket feed (the protocol's reference client)."""
    from streamer.tools.watch import main as watch_main

    return watch_main(args.url, args.symbols, args.token, args.count, args.json)


def _loadtest(args: argparse.Namespace) -> int:
    """Drive a running tickcast: produce ticks for S symbols at a rate (or a ramp of rates)
    to its ticks topic, follow them with M websocket clients on its feed, and report
    throughput, tick-to-client latency, conflation, losses and errors. Exit 1 if anything
    was lost or erred."""
    from streamer.settings import from_args
    from streamer.tools import loadtest

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


def _serve(args: argparse.Namespace) -> int:
    """Consume ticks, publish one forecast per tick (exactly-once by default)."""
    from streamer.serve.service import serve
    from streamer.settings import from_args

    settings = from_args(args)
    setup_logging(settings.log_level)
    jax(compile_cache=True)
    loaded = load_model(settings.model)
    return serve(settings, loaded)


def _rate(text: str) -> float | None:
    """`--rate`: ticks per second (> 0), or `max` (None: as fast as possible)."""
    if text == "max":
        return None
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'max'") from None
    if not rate > 0 or rate == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 ticks/s, or 'max' (got {text})")
    return rate


def _replay(args: argparse.Namespace) -> int:
    """Publish a bundled series, a CSV, or synthetic random walks as ticks."""
    import asyncio

    from model import data
    from model.data import DataError
    from model.tickfile import read_options, read_ticks
    from streamer.jobs import replay
    from streamer.kafka.topics import ensure_topics
    from streamer.settings import from_args

    settings = from_args(args)
    if args.synthetic:
        total = args.synthetic * args.ticks_per_symbol
        start = args.start_ms if args.start_ms is not None else int(time.time() * 1000)
        ticks = replay.synthetic(args.synthetic, total, seed=args.seed, start_ms=start)
        label = f"{args.synthetic} synthetic symbols"
    else:
        # Validated with the parser serve uses: only ticks serve would accept are sent.
        path = data.bundled_path(args.data) if args.data in data.BUNDLED else Path(args.data)
        if not path.is_file():
            raise DataError(f"{args.data!r} is neither a file nor a bundled data set")
        got = read_ticks(path, read_options(args))
        print(got.summary(), file=sys.stderr)
        if not got.ticks:
            print("error: nothing valid to send", file=sys.stderr)
            return 1
        if args.strict and (got.rejected or got.no_price):
            print("error: invalid rows (--strict); nothing sent", file=sys.stderr)
            return 2
        series = data.to_series(got)
        total = len(got.ticks)
        ticks = replay.interleave(series)
        label = f"{args.data} ({len(series)} symbols)"
        n_skip = len(got.no_price) + sum(got.skipped.values())
        label += f"; {n_skip} skipped, {len(got.rejected)} rejected, not sent"
    rate = args.rate
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
    print(f"sent {res.sent} ticks of {label} in {res.seconds:.1f} s ({res.rate:,.0f}/s)")
    return 0 if res.sent else 1


def _kafka(args: argparse.Namespace) -> int:
    """`tickcast kafka up|down|status`: exit 0; `up` 1 if the broker could not start;
    `status` 3 when none runs."""
    from streamer.kafka.cluster import down, status, up
    from streamer.kafka.jars import LocalKafkaError

    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.action == "up":
        before = status(data_dir)
        try:
            broker = up(args.port, data_dir)
        except LocalKafkaError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        verb = "already running" if before["running"] else "started"
        print(f"kafka {KAFKA_VERSION} {verb}: {broker.bootstrap} (pid {broker.pid}, "
              f"data {broker.data_dir})")  # fmt: skip
        return 0
    if args.action == "down":
        stopped = down(data_dir)
        print("kafka stopped" if stopped else "kafka was not running")
        return 0
    info = status(data_dir)
    if args.json:
        print(json.dumps(info))
    elif info["running"]:
        state = "ready" if info["ready"] else "not answering yet"
        print(f"kafka running: {info['bootstrap']} (pid {info['pid']}, {state}, "
              f"data {info['data_dir']})")  # fmt: skip
    else:
        print(f"kafka not running (data {info['data_dir']})")
        from streamer.kafka.probe import metadata_brokers

        with contextlib.suppress(OSError, struct.error):
            if metadata_brokers(args.port, timeout=1.0):  # someone else's, or another dir's
                print(f"  but a Kafka broker answers on 127.0.0.1:{args.port}: started with "
                      "another --data-dir?")  # fmt: skip
    return 0 if info["running"] else 3
