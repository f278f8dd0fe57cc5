"""`tickcast loadtest`: drive a running tickcast end to end and report what it holds.

It produces ticks to the ticks topic for S symbols at a target rate (or a ramp of rates),
while M websocket clients, spread over a few worker processes, follow chosen subsets of the
symbols on the feed. For every forecast a client receives it records the latency from its
tick's produce time (the Kafka timestamp the producer stamped, carried in the forecast as
`tick_time`) to its arrival. Everything runs against addresses given as arguments, so it
targets any tickcast, and everything is bounded: by the plan's duration, a tick budget and
a drain deadline.

Accounting, per client and symbol (symbol names carry a per-run tag, so the engine's
per-symbol `seq` counts exactly this run's ticks): after the stream drains, a client that
follows symbol s should have seen every forecast of s after its snapshot (or from seq 1
when s had no forecast yet at subscription), except those the server reported conflated.
What is neither seen nor reported is `lost`. A gap in a connection's own message `seq`
also counts as lost.

Pure parts (`ClientBook`, `step_stats`, `sustained`) are tested without sockets; the shell
(`produce`, `client_worker`, `run`) is thin.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import multiprocessing as mp
import random
import sys
import time
import uuid
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = ["ClientBook", "Plan", "run", "step_stats", "sustained"]


# ------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    """What to drive. Rates in ticks/s, times in seconds."""

    bootstrap: str = "127.0.0.1:9092"
    ticks_topic: str = "ticks"
    feed_url: str = "ws://127.0.0.1:8765/ws"
    token: str | None = None
    symbols: int = 100
    rates: tuple[float, ...] = (1000.0,)  # one per step; a ramp has several
    step_s: float = 10.0
    warmup_s: float = 2.0  # produced at the first rate, not scored
    clients: int = 10
    per_client: int = 10  # symbols each client follows; 0: all ("*")
    procs: int = 1  # client worker processes
    drain_s: float = 10.0  # after the last tick: wait this long at most for its forecasts
    max_ticks: int = 5_000_000
    slo_ms: float = 50.0
    metrics_url: str | None = None  # the server's /metrics: a server-side latency breakdown
    seed: int = 0
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        if self.symbols < 1 or self.clients < 0 or self.procs < 1:
            raise ValueError("symbols and procs must be >= 1, clients >= 0")
        if not self.rates or min(self.rates) <= 0:
            raise ValueError("rates must be > 0")
        if self.per_client < 0 or self.per_client > self.symbols:
            raise ValueError(f"per_client must be in 0..{self.symbols} (0: every symbol)")
        if self.step_s <= 0 or self.warmup_s < 0 or self.drain_s < 0:
            raise ValueError("step_s must be > 0, warmup_s and drain_s >= 0")

    @property
    def names(self) -> list[str]:
        return [f"LT{self.tag}-{i:05d}" for i in range(self.symbols)]

    @property
    def seconds(self) -> float:
        return self.warmup_s + self.step_s * len(self.rates)

    def subscriptions(self) -> list[list[str] | str]:
        """Each client's symbols (seeded), or "*" for all."""
        rng = random.Random(self.seed)
        names = self.names
        if self.per_client == 0:
            return ["*"] * self.clients
        return [rng.sample(names, self.per_client) for _ in range(self.clients)]


def parse_ramp(text: str) -> tuple[float, ...]:
    """`START:STOP:STEP` (ticks/s, inclusive) -> the rates of a ramp."""
    try:
        a, b, s = (float(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--ramp wants START:STOP:STEP, got {text!r}") from None
    if a <= 0 or b < a or s <= 0:
        raise ValueError("--ramp needs 0 < START <= STOP and STEP > 0")
    return tuple(float(r) for r in np.arange(a, b + s / 2, s))


# ------------------------------------------------------------------------- accounting
class ClientBook:
    """One connection's view: message seq continuity, per-symbol forecast seq, latencies.

    Latency samples are `(tick_time ms, latency ms)`; only `update` forecasts are timed
    (a snapshot is state, not a delivery)."""

    def __init__(self) -> None:
        self.seq = 0
        self.seq_gaps = 0
        self.first: dict[str, int] = {}  # symbol -> seq of the first forecast seen
        self.last: dict[str, int] = {}
        self.seen: dict[str, int] = {}  # forecasts seen after the first
        self.delivered = 0
        self.conflated = 0
        self.errors: list[str] = []
        # array.array, not lists: millions of samples as Python floats make the garbage
        # collector's full passes long enough to show up in the latencies measured.
        self.tick_ms = array("d")
        self.lat_ms = array("f")
        self.conf_ms: list[float] = []  # tick time of each update that reported conflation
        self.conf_n: list[int] = []

    def on_message(self, m: dict[str, Any], now_ms: float) -> None:
        s = m.get("seq")
        if isinstance(s, int):
            if self.seq and s != self.seq + 1:
                self.seq_gaps += s - self.seq - 1 if s > self.seq else 1
            self.seq = s
        kind = m.get("type")
        if kind == "update":
            c = int(m.get("conflated", 0))
            if c:
                self.conflated += c
                self.conf_ms.append(m["forecasts"][0]["tick_time"] if m["forecasts"] else now_ms)
                self.conf_n.append(c)
            for f in m["forecasts"]:
                self._forecast(f, snapshot=False)
                self.delivered += 1
                self.tick_ms.append(f["tick_time"])
                self.lat_ms.append(now_ms - f["tick_time"])
        elif kind == "snapshot" and m.get("forecast"):
            self._forecast(m["forecast"], snapshot=True)
        elif kind == "error":
            self.errors.append(f"{m.get('code')}: {m.get('message')}")

    def _forecast(self, f: dict[str, Any], snapshot: bool) -> None:
        """A symbol first met in a snapshot is owed from the snapshot's seq on; one first
        met in an update had no forecast when subscribed (the feed sends a snapshot of
        every symbol that has one), so it is owed from its first forecast, seq 1."""
        sym, q = f["symbol"], int(f["seq"])
        if sym not in self.first:
            self.first[sym] = q if snapshot else 0
            self.seen[sym] = 0 if snapshot else 1
        elif q > self.last[sym]:
            self.seen[sym] += 1
        self.last[sym] = max(q, self.last.get(sym, q))

    def caught_up(self, final: dict[str, int], follows: list[str] | str) -> bool:
        """Has the last forecast of every followed symbol arrived?"""
        syms = list(final) if follows == "*" else follows
        return all(self.last.get(s, 0) >= final.get(s, 0) for s in syms)

    def lost(self, final: dict[str, int], follows: list[str] | str) -> int:
        """Forecasts of followed symbols neither seen nor reported conflated, plus gaps."""
        syms = list(final) if follows == "*" else follows
        missing = 0
        for s in syms:
            n = final.get(s, 0)
            if s in self.first:  # seen from `first` on: everything after it is owed
                missing += max(0, n - self.first[s] - self.seen[s])
            else:  # never seen: every forecast of the run was owed
                missing += n
        return max(0, missing - self.conflated) + self.seq_gaps


def step_stats(
    tick_ms: np.ndarray,
    lat_ms: np.ndarray,
    t0_ms: float,
    step_s: float,
    n_steps: int,
    conf_ms: np.ndarray | None = None,
    conf_n: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Latency percentiles, deliveries/s and conflated forecasts per step, by the tick's
    produce time.

    Args:
      tick_ms, lat_ms: per delivery `[n]`: its tick's produce time and its latency (ms).
      t0_ms: when the first scored step began (epoch ms).
      conf_ms, conf_n: per conflation report `[m]`: its tick time and how many.
    """
    idx = np.floor((tick_ms - t0_ms) / (step_s * 1000)).astype(np.int64)
    cidx = (np.floor((conf_ms - t0_ms) / (step_s * 1000)).astype(np.int64)
            if conf_ms is not None else np.zeros(0, np.int64))  # fmt: skip
    cn = conf_n if conf_n is not None else np.zeros(0, np.int64)
    out = []
    for k in range(n_steps):
        lat = lat_ms[idx == k]
        pct = np.percentile(lat, [50, 99]) if len(lat) else (math.nan, math.nan)
        out.append({
            "deliveries_per_s": len(lat) / step_s,
            "p50_ms": float(pct[0]), "p99_ms": float(pct[1]),
            "max_ms": float(lat.max()) if len(lat) else math.nan,
            "conflated": int(cn[cidx == k].sum()),
        })  # fmt: skip
    return out


def sustained(steps: list[dict[str, Any]], slo_ms: float) -> float | None:
    """The highest target rate held: p99 under the SLO, >= 95% of the target produced and
    nothing conflated at that step (None if no step held). Every step is in the report, so
    a lower step that failed (a hiccup) is visible beside it. Lost forecasts are counted
    per run (by symbol, not by step) and reported separately."""
    held = [
        s["target_per_s"]
        for s in steps
        if s["p99_ms"] < slo_ms
        and s["ticks_per_s"] >= 0.95 * s["target_per_s"]
        and s.get("conflated", 0) == 0
    ]
    return max(held) if held else None


# ------------------------------------------------------------------------------ shell
def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# Server-side histograms the report breaks latency down with (when --metrics is given).
BREAKDOWN = {
    "tickcast_tick_to_forecast_seconds": "tick produced -> forecast committed",
    "tickcast_batch_seconds": "micro-batch compute (decode, step, encode)",
    "tickcast_step_seconds": "device step per micro-batch",
    "tickcast_feed_send_seconds": "forecast in hub -> frame written to the socket",
}


def scrape_histograms(url: str) -> dict[str, list[tuple[float, float]]]:
    """Cumulative `(le, count)` buckets of every histogram at a Prometheus endpoint."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[float, float]]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.type != "histogram":
            continue
        for smp in fam.samples:
            if smp.name.endswith("_bucket"):
                out.setdefault(fam.name, []).append((float(smp.labels["le"]), smp.value))
    return out


def quantile_between(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float | None:
    """The q-quantile of what a histogram observed between two scrapes (linear within a
    bucket, as Prometheus' histogram_quantile); None if it observed nothing."""
    b = dict(before)
    rows = sorted((le, n - b.get(le, 0.0)) for le, n in after)
    total = rows[-1][1] if rows else 0.0
    if total <= 0:
        return None
    rank, lo, prev = q * total, 0.0, 0.0
    for le, n in rows:
        if n >= rank:
            if math.isinf(le):
                return lo
            return lo + (le - lo) * (rank - prev) / max(n - prev, 1e-12)
        lo, prev = le, n
    return lo


def breakdown(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Server-side p50/p99 (ms) of each `BREAKDOWN` histogram over the run."""
    out = {}
    for name, what in BREAKDOWN.items():
        if name in after:
            p50 = quantile_between(before.get(name, []), after[name], 0.5)
            p99 = quantile_between(before.get(name, []), after[name], 0.99)
            out[name] = {"what": what, "p50_ms": None if p50 is None else p50 * 1000,
                         "p99_ms": None if p99 is None else p99 * 1000}  # fmt: skip
    return out


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

    loop = _loop()
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
            target = _target(plan, el)
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


def _target(plan: Plan, el: float) -> float:
    """Ticks that should have been sent `el` seconds in (the integral of the rate)."""
    r0 = plan.rates[0]
    if el <= plan.warmup_s:
        return r0 * el
    n = r0 * plan.warmup_s
    t = el - plan.warmup_s
    for r in plan.rates:
        dt = min(t, plan.step_s)
        n += r * dt
        t -= dt
        if t <= 0:
            break
    return n


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


def build_report(plan: Plan, made: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """The report: whole-run and per-step figures, and the arrays for the plots."""
    tick = np.concatenate([r["tick_ms"] for r in results] or [np.zeros(0)])
    lat = np.concatenate([r["lat_ms"] for r in results] or [np.zeros(0, np.float32)])
    t0 = made["scored_from_ms"]
    scored = tick >= t0
    n_steps = len(plan.rates)
    conf_ms = np.concatenate([r["conf_ms"] for r in results] or [np.zeros(0)])
    conf_n = np.concatenate([r["conf_n"] for r in results] or [np.zeros(0, np.int64)])
    steps = step_stats(tick[scored], lat[scored], t0, plan.step_s, n_steps, conf_ms, conf_n)
    per_sec = made["per_second"]
    w = int(plan.warmup_s)
    lost = sum(r["lost"] for r in results)
    for k, s in enumerate(steps):
        secs = per_sec[w + int(k * plan.step_s) : w + int((k + 1) * plan.step_s)]
        s["target_per_s"] = plan.rates[k]
        s["ticks_per_s"] = sum(secs) / plan.step_s
    sl = lat[scored]
    scored_s = plan.step_s * n_steps
    report: dict[str, Any] = {
        "plan": {k: v for k, v in asdict(plan).items() if k != "token"},
        "ticks_sent": made["total"],
        "ticks_per_s": sum(per_sec[w:]) / scored_s if scored_s else 0.0,
        "deliveries_per_s": len(sl) / scored_s if scored_s else 0.0,
        "latency_ms": {
            "p50": float(np.percentile(sl, 50)) if len(sl) else None,
            "p99": float(np.percentile(sl, 99)) if len(sl) else None,
            "max": float(sl.max()) if len(sl) else None,
        },
        "delivered": int(sum(r["delivered"] for r in results)),
        "conflated": int(sum(r["conflated"] for r in results)),
        "lost": int(lost),
        "seq_gaps": int(sum(r["seq_gaps"] for r in results)),
        "errors": int(sum(r["n_errors"] for r in results)),
        "error_samples": [e for r in results for e in r["errors"]][:10],
        "steps": steps,
        "sustained_per_s": sustained(steps, plan.slo_ms),
    }
    report["_arrays"] = {"tick_ms": tick, "lat_ms": lat, "per_second": per_sec, "t0_ms": t0}
    return report


def plot(report: dict[str, Any], folder: str | Path) -> list[str]:
    """latency.png (p50/p99 per second over time), histogram.png, throughput.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = report["_arrays"]
    tick, lat = a["tick_ms"], a["lat_ms"]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    start = tick.min() if len(tick) else 0.0
    sec = ((tick - start) // 1000).astype(np.int64) if len(tick) else np.zeros(0, np.int64)
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4))
    if len(sec):
        xs = np.unique(sec)
        for q, style in ((50, "-"), (99, "--")):
            ys = [np.percentile(lat[sec == x], q) for x in xs]
            ax.plot(xs, ys, style, label=f"p{q}")
        ax.axhline(report["plan"]["slo_ms"], color="red", lw=0.8, label="SLO")
    ax.set(xlabel="s (tick produce time)", ylabel="tick → client ms", title="Latency over time")
    ax.legend()
    fig.tight_layout()
    paths.append(str(out / "latency.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    if len(lat):
        edges = np.logspace(np.log10(max(float(lat.min()), 0.1)), np.log10(lat.max() + 1), 60)
        ax.hist(lat, bins=list(edges))
        ax.set_xscale("log")
    ax.set(xlabel="tick → client ms", ylabel="deliveries", title="Latency histogram")
    fig.tight_layout()
    paths.append(str(out / "histogram.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(np.arange(len(a["per_second"])), a["per_second"], label="ticks produced/s")
    if len(sec):
        ax.plot(*np.unique(sec, return_counts=True), label="deliveries/s")
    ax.set(xlabel="s", ylabel="per second", title="Throughput")
    ax.legend()
    fig.tight_layout()
    paths.append(str(out / "throughput.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def format_report(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    lines = [
        f"ticks sent {r['ticks_sent']:,} ({r['ticks_per_s']:,.0f}/s scored), deliveries "
        f"{r['deliveries_per_s']:,.0f}/s, latency p50 {_ms(lat['p50'])} p99 {_ms(lat['p99'])} "
        f"max {_ms(lat['max'])}",
        f"conflated {r['conflated']:,}, lost {r['lost']:,}, errors {r['errors']:,}",
        "",
        "target/s | ticks/s | deliveries/s | p50 ms | p99 ms | max ms | conflated",
        "---|---|---|---|---|---|---",
    ]
    for s in r["steps"]:
        lines.append(f"{s['target_per_s']:,.0f} | {s['ticks_per_s']:,.0f} | "
                     f"{s['deliveries_per_s']:,.0f} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | "
                     f"{_ms(s['max_ms'])} | {s['conflated']:,}")  # fmt: skip
    if r.get("server"):
        lines += ["", "server side (its Prometheus histograms over the run) | p50 ms | p99 ms",
                  "---|---|---"]  # fmt: skip
        for v in r["server"].values():
            lines.append(f"{v['what']} | {_ms(v['p50_ms'])} | {_ms(v['p99_ms'])}")
    best = r["sustained_per_s"]
    slo = r["plan"]["slo_ms"]
    lines.append("")
    lines.append(f"sustained with p99 < {slo:.0f} ms, nothing conflated: "
                 + (f"{best:,.0f} ticks/s" if best else "none of the rates"))  # fmt: skip
    return "\n".join(lines)


def _ms(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def write_json(report: dict[str, Any], path: str) -> None:
    clean = {k: v for k, v in report.items() if k != "_arrays"}
    Path(path).write_text(json.dumps(clean, indent=1, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


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
