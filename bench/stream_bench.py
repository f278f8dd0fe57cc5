"""The whole stream through a real Kafka broker: sustained ticks/s and tick→forecast latency.

Everything runs on this machine as it would in production: a local Apache Kafka broker
(`streamer.kafka.local`), `tickcast serve` in its own process (exactly-once unless told),
`tickcast replay --synthetic S` in another process as the feed, and this script as the
forecast subscriber (read_committed). For each number of symbols S:

* max rate: S random-walk symbols' ticks are loaded into the topic first, then serve drains
  the backlog; sustained ticks/s is read from serve's own Prometheus counter (a real
  scrape) between 20% and 100% of the backlog, so start-up and compilation are excluded;
* fixed rates: the feed publishes at R ticks/s for `--seconds`; latency is the time from
  the tick's Kafka timestamp (set when the feed sends it) to the moment this script reads
  its forecast, which includes the transaction commit. Kafka timestamps are milliseconds.

    python bench/stream_bench.py [--quick] [--symbols 1,100,1000,10000] [--json OUT]
        [--at-least-once]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.kafka.local import LocalBroker, free_port  # noqa: E402

PLAN = {1: [1000], 100: [1000, 5000], 1000: [5000, 20000], 10000: [5000, 20000]}
BACKLOG = {1: 100_000, 100: 300_000, 1000: 400_000, 10000: 400_000}


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(tickcast_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def env_for(bootstrap: str, tag: str, partitions: int, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TICKCAST_KAFKA_BOOTSTRAP": bootstrap,
            "TICKCAST_TICKS_TOPIC": f"ticks-{tag}",
            "TICKCAST_FORECASTS_TOPIC": f"forecasts-{tag}",
            "TICKCAST_DLQ_TOPIC": f"dlq-{tag}",
            "TICKCAST_STATE_TOPIC": f"state-{tag}",
            "TICKCAST_GROUP_ID": f"bench-{tag}",
            "TICKCAST_NUM_PARTITIONS": str(partitions),
            "TICKCAST_LOG_LEVEL": "WARNING",
            "JAX_PLATFORMS": "cpu",
            **extra,
        }
    )
    return env


_next_ts: dict[int, int] = {}


def replay(env: dict[str, str], symbols: int, ticks: int, rate: str) -> subprocess.Popen[bytes]:
    """The feed. Synthetic ticks of a symbol are 1 ms apart in `ts`, so a backlog can run
    ahead of the clock: each feed starts after the previous one's last tick."""
    per = max(1, ticks // symbols)
    start = max(int(time.time() * 1000), _next_ts.get(symbols, 0))
    _next_ts[symbols] = start + per + 1
    return subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "replay", "--synthetic", str(symbols),
         "--ticks-per-symbol", str(per), "--rate", rate, "--quiet", "--start-ms", str(start)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def subscribe(
    bootstrap: str, topic: str, until: float, lat: list[float], from_ms: float
) -> float:
    """Read forecasts until `until` (monotonic); latency of those whose tick was sent
    after `from_ms` (epoch ms). Returns the span of those ticks' send times (s)."""
    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="latest",
        isolation_level="read_committed",
        fetch_max_wait_ms=5,
    )
    await c.start()
    first, last = float("inf"), 0.0
    try:
        while time.monotonic() < until:
            got = await c.getmany(timeout_ms=50)
            now = time.time() * 1000
            for recs in got.values():
                for r in recs:
                    d = orjson.loads(r.value)
                    if d["tick_time"] >= from_ms:
                        lat.append(now - d["tick_time"])
                        first, last = min(first, d["tick_time"]), max(last, d["tick_time"])
    finally:
        await c.stop()
    return (last - first) / 1000 if last > first else float("nan")


def run_symbols(
    broker: LocalBroker, s: int, rates: list[int], seconds: float, backlog: int,
    extra: dict[str, str], log: Path,
) -> list[dict[str, Any]]:  # fmt: skip
    tag = uuid.uuid4().hex[:8]
    partitions = 4
    env = env_for(broker.bootstrap, tag, partitions, extra)
    rows: list[dict[str, Any]] = []
    # 1. Backlog, then serve drains it.
    feed = replay(env, s, backlog, "max")
    assert feed.wait() == 0, "replay failed"
    port = free_port()
    serve_env = {**env, "TICKCAST_METRICS_PORT": str(port)}
    with open(log, "ab") as fh:
        serve = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "serve"], cwd=ROOT, env=serve_env,
            stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        marks: list[tuple[float, float]] = []
        t_end = time.monotonic() + 300
        while time.monotonic() < t_end:
            time.sleep(0.2)
            try:
                n = scrape(port).get("tickcast_ticks_consumed_total", 0.0)
            except OSError:
                continue
            marks.append((time.monotonic(), n))
            if n >= backlog:
                break
        ts, ns = np.array(marks).T
        lo = int(np.searchsorted(ns, 0.2 * backlog))
        hi = int(np.searchsorted(ns, backlog))
        hi = min(hi, len(ns) - 1)
        rate = (ns[hi] - ns[lo]) / (ts[hi] - ts[lo]) if hi > lo else float("nan")
        m = scrape(port)
        rows.append(
            {
                "symbols": s, "mode": "max", "target": None, "ticks_per_s": rate,
                "batch_mean": m.get("tickcast_batch_ticks_sum", 0)
                / max(1.0, m.get("tickcast_batch_ticks_count", 1)),
            }
        )  # fmt: skip
        print(f"  S={s:>6} max rate: {rate:,.0f} ticks/s", flush=True)
        # 2. Fixed rates, measured at the subscriber.
        for r in rates:
            lat: list[float] = []
            start_ms = time.time() * 1000 + 500
            until = time.monotonic() + seconds + 3
            feed = replay(env, s, int(r * seconds), str(r))
            span = asyncio.run(
                subscribe(broker.bootstrap, env["TICKCAST_FORECASTS_TOPIC"], until, lat, start_ms)
            )
            feed.wait()
            a = np.array(lat) if lat else np.array([np.nan])
            rows.append(
                {
                    "symbols": s, "mode": "fixed", "target": r, "ticks_per_s": len(lat) / span,
                    "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
                    "max_ms": float(a.max()), "n": len(lat),
                }
            )  # fmt: skip
            print(
                f"  S={s:>6} {r:>6}/s: p50 {rows[-1]['p50_ms']:.1f} ms, "
                f"p99 {rows[-1]['p99_ms']:.1f} ms",
                flush=True,
            )
    finally:
        serve.terminate()
        rc = serve.wait(60)
        if rc != 0:
            print(f"  serve exited {rc}; see {log}")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| symbols | load | ticks/s | p50 ms | p99 ms | max ms |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["mode"] == "max":
            out.append(
                f"| {r['symbols']:,} | max (backlog, mean batch {r['batch_mean']:,.0f}) "
                f"| {r['ticks_per_s']:,.0f} | | | |"
            )
        else:
            out.append(
                f"| {r['symbols']:,} | {r['target']:,}/s | {r['ticks_per_s']:,.0f} "
                f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |"
            )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--symbols", default="1,100,1000,10000")
    ap.add_argument("--seconds", type=float, default=10.0, help="per fixed-rate run")
    ap.add_argument("--quick", action="store_true", help="1,000 symbols only, shorter runs")
    ap.add_argument("--at-least-once", action="store_true", help="serve without transactions")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    symbols = [1000] if args.quick else [int(x) for x in args.symbols.split(",")]
    seconds = 5.0 if args.quick else args.seconds
    extra = {"TICKCAST_EXACTLY_ONCE": "false"} if args.at_least_once else {}
    mode = "at-least-once" if args.at_least_once else "exactly-once"
    print(
        f"stream bench ({mode}) on {platform.node()}: {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}"
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        broker = LocalBroker(Path(d) / "kafka", port=free_port())
        broker.start()
        try:
            for s in symbols:
                rows += run_symbols(broker, s, PLAN.get(s, [5000]), seconds,
                                    BACKLOG.get(s, 200_000) // (4 if args.quick else 1), extra,
                                    Path(d) / "serve.log")  # fmt: skip
        finally:
            broker.stop()
    for r in rows:
        r["mode_eos"] = mode
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"mode": mode, "cpus": os.cpu_count(), "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
