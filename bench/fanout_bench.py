"""Websocket fan-out: how many forecast deliveries a second the feed holds, at what latency.

The feed server (`streamer.feed.server.FeedServer`, the one `tickcast serve` runs) runs in this
process on uvloop with a publisher task standing in for the stream: every `--batch-ms` it
publishes one micro-batch of forecasts to the hub, `--rate` forecasts a second in all, over
`--universe` symbols. The payloads have the real schema (and size, ~330 bytes) plus a `pub`
stamp (epoch ms, µs resolution). N clients run in a second process (real websocket clients
on uvloop, one connection each), each subscribed to `--per-client` random symbols, and
record for every forecast they receive the time from `pub` to its arrival.

A *delivery* is one forecast arriving at one client; a *frame* is one websocket message (a
client's pending forecasts are merged into one). Kafka is not involved: `bench/stream_bench.py`
measures the path from ticks to the hub, this measures the hub to the clients.

    python bench/fanout_bench.py [--clients 100,1000] [--seconds 10] [--rate 5000]
                                 [--universe 500] [--per-client 10] [--batch-ms 10] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.feed.hub import Hub  # noqa: E402
from streamer.feed.server import FeedServer  # noqa: E402
from streamer.kafka.local import free_port  # noqa: E402
from streamer.loop import new_event_loop  # noqa: E402
from streamer.settings import Settings  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------------------- clients


def clients_main(url: str, n: int, subs: list[list[str]], seconds: float, warm: float,
                 conn: Any) -> None:  # fmt: skip
    """N websocket clients; sends back (latencies ms [deliveries], frames, conflated, cpu)."""
    from websockets.asyncio.client import connect

    async def main() -> dict[str, Any]:
        lat: list[float] = []
        counts = {"frames": 0, "conflated": 0, "closed": 0}
        started = asyncio.Event()
        t_start = [float("inf")]

        async def one(i: int) -> None:
            try:
                async with connect(url, compression=None, max_queue=None,
                                   open_timeout=60) as ws:  # fmt: skip
                    await ws.send(orjson.dumps({"op": "subscribe", "symbols": subs[i]}).decode())
                    ready.append(i)
                    await started.wait()
                    async for raw in ws:
                        now = time.time() * 1000
                        if now < t_start[0]:
                            continue
                        if '"type":"update"' not in raw[:40]:
                            continue
                        m = orjson.loads(raw)
                        counts["frames"] += 1
                        counts["conflated"] += m.get("conflated", 0)
                        lat.extend(now - f["pub"] for f in m["forecasts"])
            except Exception as e:
                if not isinstance(e, asyncio.CancelledError):
                    counts["closed"] += 1
                    errors.append(repr(e))

        ready: list[int] = []
        errors: list[str] = []
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(one(i)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # don't flood the accept queue
        while len(ready) < n and not all(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        conn.send("ready")
        started.set()
        await asyncio.sleep(warm)
        t_start[0] = time.time() * 1000
        c0 = cpu_s()
        await asyncio.sleep(seconds)
        cpu = cpu_s() - c0
        frames = counts["frames"]
        out = {"lat": np.asarray(lat, np.float32), "frames": frames, "cpu": cpu,
               "conflated": counts["conflated"], "closed": counts["closed"],
               "errors": errors[:3]}  # fmt: skip
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return out

    loop = new_event_loop()
    try:
        result = loop.run_until_complete(main())
    finally:
        loop.close()
    conn.send(result)
    conn.close()


# ----------------------------------------------------------------------------------- server


def payload(sym: str, seq: int, price: float, pub_ms: float) -> bytes:
    return orjson.dumps(
        {
            "symbol": sym, "ts": int(pub_ms), "source": {"partition": 1, "offset": seq},
            "seq": seq, "price": price, "forecast": price * 1.0001, "lower": price * 0.99,
            "upper": price * 1.01, "warming": False, "model": "20261126T122816Z-246acf9b",
            "tick_time": int(pub_ms), "instance": "serve-1", "pub": pub_ms,
        }
    )  # fmt: skip


async def run_cell(args: argparse.Namespace, n_clients: int) -> dict[str, Any]:
    rng = random.Random(n_clients)
    universe = [f"SYM{i:04d}" for i in range(args.universe)]
    subs = [rng.sample(universe, args.per_client) for _ in range(n_clients)]
    settings = replace(
        Settings(), feed_port=free_port(), feed_max_connections=n_clients + 10,
        feed_max_symbols=max(args.per_client, 1000), feed_frames_per_s=args.frame_rate,
    )  # fmt: skip
    hub = Hub(snapshot_points=10)
    feed = FeedServer(settings, hub)
    await feed.start()
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(
        target=clients_main, args=(feed.url, n_clients, subs, args.seconds, args.warm, child)
    )
    proc.start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, parent.recv)  # "ready": all subscribed

    per_batch = max(1, round(args.rate * args.batch_ms / 1000))
    seq = dict.fromkeys(universe, 0)
    stop = asyncio.Event()
    published = [0]

    async def publisher() -> None:
        nxt = time.perf_counter()
        k = 0
        while not stop.is_set():
            pub = time.time() * 1000
            syms = [universe[(k + j) % len(universe)] for j in range(per_batch)]
            k += per_batch
            vals = []
            for s in syms:
                seq[s] += 1
                vals.append(payload(s, seq[s], 100.0 + seq[s] % 7, pub))
            hub.publish(syms, vals)
            published[0] += len(vals)
            nxt += args.batch_ms / 1000
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

    pub_task = asyncio.create_task(publisher())
    await asyncio.sleep(args.warm)
    c0, p0, t0 = cpu_s(), published[0], time.perf_counter()
    d0 = feed.feed.deliveries
    await asyncio.sleep(args.seconds)
    server_cpu, wall = cpu_s() - c0, time.perf_counter() - t0
    offered = (published[0] - p0) / wall
    sent = (feed.feed.deliveries - d0) / wall
    res = await loop.run_in_executor(None, parent.recv)
    stop.set()
    await pub_task
    proc.join(30)
    await feed.close()
    lat = res["lat"]
    return {
        "clients": n_clients,
        "offered_forecasts_per_s": offered,
        "deliveries_per_s": len(lat) / args.seconds,
        "server_deliveries_per_s": sent,
        "frames_per_s": res["frames"] / args.seconds,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "max_ms": float(lat.max()) if len(lat) else float("nan"),
        "conflated": res["conflated"],
        "closed": res["closed"],
        "server_cpu": server_cpu / wall,
        "client_cpu": res["cpu"] / args.seconds,
        "errors": res["errors"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", default="100,1000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warm", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=5000.0, help="forecasts/s published")
    ap.add_argument("--universe", type=int, default=500, help="symbols published")
    ap.add_argument("--per-client", type=int, default=10, help="symbols each client follows")
    ap.add_argument("--batch-ms", type=float, default=10.0, help="interval of published batches")
    ap.add_argument("--frame-rate", type=float, default=Settings().feed_frames_per_s,
                    help="feed_frames_per_s of the server (default: its default)")  # fmt: skip
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    try:
        import uvloop

        loop_name = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop_name = "asyncio"
    rows = []
    for n in (int(x) for x in args.clients.split(",")):
        runner = asyncio.Runner(loop_factory=new_event_loop)
        with runner:
            rows.append(runner.run(run_cell(args, n)))
        print(f"  {n} clients done {rows[-1]['errors']}", file=sys.stderr)

    cpu = platform.processor() or platform.machine()
    print(f"\n## Websocket fan-out ({cpu}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {loop_name})\n")  # fmt: skip
    print(f"{args.rate:,.0f} forecasts/s published over {args.universe} symbols in "
          f"{args.batch_ms:g} ms batches; each client follows {args.per_client} random "
          f"symbols; feed_frames_per_s {args.frame_rate:g}/s; {args.seconds:g} s measured after "
          f"{args.warm:g} s.\n")  # fmt: skip
    print("| clients | published/s | deliveries/s | frames/s | p50 ms | p99 ms | max ms "
          "| conflated | closed | server CPU | clients CPU |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']:,} | {r['offered_forecasts_per_s']:,.0f} "
              f"| {r['deliveries_per_s']:,.0f} | {r['frames_per_s']:,.0f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['conflated']:,} | "
              f"{r['closed']} | {r['server_cpu']:.0%} | {r['client_cpu']:.0%} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
