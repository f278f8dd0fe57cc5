"""The load test's shell: the tick producer, the websocket client workers (processes on
their own event loop) and `run`/`main`, which tie them together.

May import `accounting`, `report`, `streamer.loop`, `streamer.core.ticks`, aiokafka and
websockets (the last three lazily, so the CLI's parser does not load them).
"""

from __future__ import annotations

import asyncio
import gc
import math
import multiprocessing as mp
import sys
import time
from typing import Any

import numpy as np
import orjson

from streamer.loop import new_event_loop
from streamer.tools.loadtest.accounting import ClientBook, Plan, target_ticks
from streamer.tools.loadtest.report import (
    breakdown,
    build_report,
    format_report,
    plot,
    scrape_histograms,
    write_json,
)

__all__ = ["client_worker", "main", "produce", "run"]


def client_worker(plan: Plan, follows: list[list[str] | str], conn: Any, progress: Any) -> None:
    """A worker process: `len(follows)` websocket clients. Protocol on `conn`: sends
    "ready" once all are subscribed; receives the final per-symbol seq when production
    ends; drains; sends back its books' arrays and counts."""
    from websockets.asyncio.client import connect

    async def main() -> dict[str, Any]:
        books = [ClientBook() for _ in follows]
        ready: list[int] = []
        closed: list[str] = []
        headers = {"Authorization": f"Bearer {plan.token}"} if plan.token else None

        async def one(i: int) -> None:
            book = books[i]
            try:
                async with connect(plan.feed_url, compression=None, max_queue=None,
                                   open_timeout=60, additional_headers=headers) as ws:  # fmt: skip
                    symbols = follows[i]
                    for k in range(0, 1 if symbols == "*" else len(symbols), 500):
                        part = symbols if symbols == "*" else symbols[k : k + 500]
                        await ws.send(orjson.dumps({"op": "subscribe", "symbols": part,
                                                    "id": k}).decode())  # fmt: skip
                    ready.append(i)
                    async for raw in ws:
                        book.on_message(orjson.loads(raw), time.time() * 1000)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                closed.append(f"client {i}: {type(e).__name__}: {e}")

        tasks = []
        for i in range(len(follows)):
            tasks.append(asyncio.create_task(one(i)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # don't flood the accept queue
        while len(ready) + len(closed) < len(follows):
            await asyncio.sleep(0.05)
        gc.freeze()  # what exists now is long-lived: keep it out of every collection
        conn.send("ready")

        loop = asyncio.get_running_loop()
        final_fut = loop.run_in_executor(None, conn.recv)
        cursor = [0] * len(books)
        while not final_fut.done():  # progress once a second: the last second's deliveries
            await asyncio.sleep(1.0)
            recent: list[float] = []
            for j, b in enumerate(books):
                recent += b.lat_ms[cursor[j] :].tolist()
                cursor[j] = len(b.lat_ms)
            p99 = float(np.percentile(recent, 99)) if recent else math.nan
            progress.put((len(recent), p99, sum(b.conflated for b in books), len(closed)))
        final: dict[str, int] = await final_fut
        deadline = time.monotonic() + plan.drain_s
        while time.monotonic() < deadline and not all(
            b.caught_up(final, f) for b, f in zip(books, follows, strict=True)
        ):
            await asyncio.sleep(0.1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "tick_ms": np.concatenate(
                [np.frombuffer(b.tick_ms, np.float64) for b in books] or [np.zeros(0)]
            ),
            "lat_ms": np.concatenate(
                [np.frombuffer(b.lat_ms, np.float32) for b in books] or [np.zeros(0, np.float32)]
            ),
            "delivered": sum(b.delivered for b in books),
            "conflated": sum(b.conflated for b in books),
            "lost": sum(b.lost(final, f) for b, f in zip(books, follows, strict=True)),
            "seq_gaps": sum(b.seq_gaps for b in books),
            "conf_ms": np.asarray([x for b in books for x in b.conf_ms], np.float64),
            "conf_n": np.asarray([x for b in books for x in b.conf_n], np.int64),
            "errors": [e for b in books for e in b.errors][:20] + closed[:20],
            "n_errors": sum(len(b.errors) for b in books) + len(closed),
        }

    loop = new_event_loop()
    try:
        result = loop.run_until_complete(main())
    finally:
        loop.close()
    conn.send(result)
    conn.close()


async def produce(plan: Plan, stop_at: float) -> dict[str, Any]:
    """Send ticks at the plan's rates until its end (or `max_ticks`). Returns the ticks
    sent per symbol, per second of the run, and when the scored steps began."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    from streamer.core.ticks import encode

    producer = AIOKafkaProducer(bootstrap_servers=plan.bootstrap, acks=1, linger_ms=0,
                                max_batch_size=1 << 20)  # fmt: skip
    await producer.start()
    names = plan.names
    rng = np.random.default_rng(plan.seed)
    logp = np.log(rng.uniform(20, 200, len(names)))
    sent = np.zeros(len(names), np.int64)
    per_second: list[int] = []
    try:
        n_parts = len(await producer.partitions_for(plan.ticks_topic))
        parts = list(range(n_parts))
        hasher = DefaultPartitioner()
        part_of = [hasher(n.encode(), parts, parts) for n in names]
        keys = [n.encode() for n in names]
        t0 = time.perf_counter()
        scored_from = time.time() * 1000 + plan.warmup_s * 1000
        k = total = 0
        pending: list[Any] = []
        while total < plan.max_ticks:
            el = time.perf_counter() - t0
            if el >= stop_at:
                break
            target = target_ticks(plan, el)
            n = min(int(target) - total, plan.max_ticks - total, 20000)
            if n > 0:
                now_ms = int(time.time() * 1000)
                idx = (np.arange(k, k + n) % len(names)).astype(np.int64)
                k += n
                logp[idx] += rng.normal(0, 1e-3, n)
                batches: dict[int, Any] = {}
                for i in idx.tolist():
                    p = part_of[i]
                    b = batches.get(p)
                    if b is None:
                        b = batches[p] = producer.create_batch()
                    v = encode(names[i], now_ms, float(np.exp(logp[i])), 100.0)
                    if b.append(key=keys[i], value=v, timestamp=None) is None:
                        pending.append(await producer.send_batch(b, plan.ticks_topic, partition=p))
                        b = batches[p] = producer.create_batch()
                        b.append(key=keys[i], value=v, timestamp=None)
                for p, b in batches.items():
                    pending.append(await producer.send_batch(b, plan.ticks_topic, partition=p))
                np.add.at(sent, idx, 1)
                total += n
                sec = int(el)
                per_second.extend([0] * (sec + 1 - len(per_second)))
                per_second[sec] += n
                if len(pending) > 256:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return {"sent": dict(zip(names, sent.tolist(), strict=True)), "per_second": per_second,
            "total": int(total), "scored_from_ms": scored_from}  # fmt: skip


async def run(plan: Plan, progress: bool = True) -> dict[str, Any]:
    """Run the plan; returns the report (`--json` writes it)."""
    ctx = mp.get_context("spawn")
    follows = plan.subscriptions()
    shares = [follows[i :: plan.procs] for i in range(plan.procs)] if plan.clients else []
    shares = [s for s in shares if s]
    queue = ctx.Queue()
    pipes, procs = [], []
    for share in shares:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=client_worker, args=(plan, share, child, queue), daemon=True)
        p.start()
        child.close()  # only the worker holds it: its death is then EOF here, not a hang
        pipes.append(parent)
        procs.append(p)
    loop = asyncio.get_running_loop()
    try:
        for parent in pipes:
            await loop.run_in_executor(None, parent.recv)  # all subscribed
        if progress:
            print(f"loadtest {plan.tag}: {plan.symbols} symbols, {plan.clients} clients x "
                  f"{plan.per_client or 'all'} symbols, rates {_fmt_rates(plan.rates)} ticks/s, "
                  f"{plan.seconds:.0f} s", file=sys.stderr)  # fmt: skip
        before = scrape_histograms(plan.metrics_url) if plan.metrics_url else {}
        t_wall = time.monotonic()
        prod = asyncio.create_task(produce(plan, plan.seconds))
        while not prod.done():
            await asyncio.sleep(1.0)
            if progress:
                _progress(plan, queue, time.monotonic() - t_wall)
        made = await prod
        for parent in pipes:
            parent.send(made["sent"])
        results = [await loop.run_in_executor(None, parent.recv) for parent in pipes]
        after = scrape_histograms(plan.metrics_url) if plan.metrics_url else {}
    finally:
        for p in procs:
            p.join(plan.drain_s + 30)
            if p.is_alive():
                p.kill()
    report = build_report(plan, made, results)
    if plan.metrics_url:
        report["server"] = breakdown(before, after)
    return report


def _fmt_rates(rates: tuple[float, ...]) -> str:
    return f"{rates[0]:,.0f}" if len(rates) == 1 else f"{rates[0]:,.0f}..{rates[-1]:,.0f}"


def _progress(plan: Plan, queue: Any, el: float) -> None:
    got, p99s, conflated, closed = 0, [], 0, 0
    while True:
        try:
            n, p99, c, k = queue.get_nowait()
        except Exception:
            break
        got += n
        conflated = max(conflated, c)
        closed = max(closed, k)
        if not math.isnan(p99):
            p99s.append(p99)
    step = max(0, int((el - plan.warmup_s) // plan.step_s))
    target = plan.rates[min(step, len(plan.rates) - 1)]
    phase = "warm-up" if el < plan.warmup_s else f"step {step + 1}/{len(plan.rates)}"
    p99 = f"{max(p99s):.1f} ms" if p99s else "-"
    print(f"  {el:5.1f} s  {phase:11s} target {target:>9,.0f}/s  deliveries {got:>8,}/s  "
          f"p99 {p99:>9s}  conflated {conflated:,}  closed {closed}", file=sys.stderr)  # fmt: skip


def main(plan: Plan, json_path: str | None, plots: str | None, progress: bool) -> int:
    """Run, print the table, write the JSON and plots; exit 0, or 1 if anything was lost
    or erred (so a CI job can gate on it)."""
    report = asyncio.run(run(plan, progress))
    print(format_report(report))
    if json_path:
        write_json(report, json_path)
    if plots:
        for p in plot(report, plots):
            print(f"plot: {p}")
    return 1 if report["lost"] or report["errors"] else 0
