"""Capacity of one tickcast instance on this machine, measured with `tickcast loadtest`.

For each cell (symbols S, subscribers M) a fresh local Kafka broker topic set and a fresh
`tickcast serve` process (exactly-once, the defaults except the feed settings below) are
started; `tickcast loadtest` then ramps the tick rate through `--rates`, each for
`--step-seconds`, with M websocket clients each following `--per-client` random symbols,
and reports per step the ticks/s produced, deliveries/s, tick→client p50/p99 and
conflation, with the server's own latency breakdown scraped from its /metrics. The highest
rate whose step and all steps below held p99 < 50 ms with nothing conflated is the cell's
sustained capacity.

Broker, serve, the load generator and its clients all share this machine's cores.

    python bench/capacity.py [--cell SYMBOLS:SUBSCRIBERS:PER_CLIENT:RATE,RATE,...]...
        [--step-seconds 8] [--frame-rate 100] [--serve-env NAME=VALUE]... [--json OUT]

The default cells: 100 symbols with 10 subscribers following 10 each (each tick reaches
one subscriber on average) and with 1,000 following 10 each (each tick reaches 100);
10,000 symbols with 10 subscribers following 1,000 each and with 1,000 following 10 each
(each tick reaches one on average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.kafka.local import LocalBroker, free_port  # noqa: E402
from streamer.tools.loadtest import Plan, format_report, run  # noqa: E402

DEFAULT_CELLS = [
    "100:10:10:1000,2000,4000,8000,16000,32000",
    "100:1000:10:100,250,500,1000,2000",
    "10000:10:1000:250,500,1000,2000,4000,8000",
    "10000:1000:10:250,500,1000,2000,4000,8000",
]


def start_serve(
    bootstrap: str, tag: str, feed: int, metrics: int, frame_rate: float, clients: int,
    log: Path, extra: dict[str, str],
) -> subprocess.Popen[bytes]:  # fmt: skip
    env = dict(os.environ)
    env.update({
        "TICKCAST_KAFKA_BOOTSTRAP": bootstrap, "TICKCAST_TICKS_TOPIC": f"ticks-{tag}",
        "TICKCAST_FORECASTS_TOPIC": f"forecasts-{tag}", "TICKCAST_DLQ_TOPIC": f"dlq-{tag}",
        "TICKCAST_STATE_TOPIC": f"state-{tag}", "TICKCAST_MODELS_TOPIC": f"models-{tag}",
        "TICKCAST_GROUP_ID": f"g-{tag}", "TICKCAST_FEED_PORT": str(feed),
        "TICKCAST_METRICS_PORT": str(metrics), "TICKCAST_FEED_FRAMES_PER_S": str(frame_rate),
        "TICKCAST_FEED_MAX_CONNECTIONS": str(clients + 100), "JAX_PLATFORMS": "cpu",
    })  # fmt: skip
    env.update(extra)
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "streamer.cli", "serve"], cwd=ROOT,
                                env=env, stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip


def wait_ready(log: Path, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if log.exists() and "symbols restored" in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"serve did not start: {log.read_text()[-2000:]}")


def cell(broker: LocalBroker, spec: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    s_, m_, k_, rates = spec.split(":")
    symbols, clients, per_client = int(s_), int(m_), int(k_)
    tag = uuid.uuid4().hex[:6]
    feed, metrics = free_port(), free_port()
    log = work / f"serve-{tag}.log"
    extra = dict(kv.split("=", 1) for kv in args.serve_env)
    proc = start_serve(broker.bootstrap, tag, feed, metrics, args.frame_rate, clients, log, extra)
    try:
        wait_ready(log)
        plan = Plan(
            bootstrap=broker.bootstrap, ticks_topic=f"ticks-{tag}",
            feed_url=f"ws://127.0.0.1:{feed}/ws", symbols=symbols,
            rates=tuple(float(r) for r in rates.split(",")), step_s=args.step_seconds,
            warmup_s=6.0, clients=clients, per_client=per_client,
            procs=1 if clients <= 100 else 2, drain_s=10.0, slo_ms=50.0,
            metrics_url=f"http://127.0.0.1:{metrics}/metrics",
        )  # fmt: skip
        report = asyncio.run(run(plan, progress=True))
    finally:
        proc.terminate()
        proc.wait(60)
    report.pop("_arrays", None)
    print(f"\n== {symbols:,} symbols, {clients:,} subscribers x {per_client:,} ==")
    print(format_report(report))
    return {"symbols": symbols, "clients": clients, "per_client": per_client, **report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cell", action="append", help="SYMBOLS:SUBSCRIBERS:PER_CLIENT:RATES")
    ap.add_argument("--step-seconds", type=float, default=8.0)
    ap.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for serve, e.g. TICKCAST_EXACTLY_ONCE=false")  # fmt: skip
    ap.add_argument("--frame-rate", type=float, default=100.0,
                    help="serve's feed_frames_per_s (default 100: <= 10 ms added)")  # fmt: skip
    ap.add_argument("--json", help="write every cell's report here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "kafka", port=free_port())
        broker.start()
        try:
            for spec in args.cell or DEFAULT_CELLS:
                rows.append(cell(broker, spec, args, work))
        finally:
            broker.stop()
    print(f"\ncapacity, {platform.machine()} x{os.cpu_count()} cores, feed_frames_per_s "
          f"{args.frame_rate:g}, serve env {args.serve_env or 'defaults'}\n")  # fmt: skip
    print("symbols | subscribers x symbols | sustained ticks/s (p99 < 50 ms) | at that rate: "
          "deliveries/s | p50 ms | p99 ms")  # fmt: skip
    print("---|---|---|---|---|---")
    for r in rows:
        best = r["sustained_per_s"]
        at = next((s for s in r["steps"] if s["target_per_s"] == best), None)
        print(f"{r['symbols']:,} | {r['clients']:,} x {r['per_client']:,} | {best or 0:,.0f} | "
              + (f"{at['deliveries_per_s']:,.0f} | {at['p50_ms']:.1f} | {at['p99_ms']:.1f}"
                 if at else "- | - | -"))  # fmt: skip
    if args.json:
        meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "args": vars(args)}
        Path(args.json).write_text(json.dumps({"meta": meta, "cells": rows}, indent=1,
                                              default=str) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
