"""`tickcast replay`: publish series as ticks (key = symbol), at a fixed rate or flat out.

Several symbols are interleaved by time. The Kafka record timestamp is the moment of
sending, so the server's tick→forecast latency is measured from it; the tick's own `ts` is
the data's time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from tqdm import tqdm

from model.data import Series
from streamer.core.ticks import encode

Tick = tuple[str, int, float, float | None]  # symbol, ts (epoch ms), price, volume


def interleave(series: list[Series]) -> Iterator[Tick]:
    """The ticks of several series merged in time order (ties: series order)."""
    sym = np.concatenate([np.full(len(s), i) for i, s in enumerate(series)])
    ts = np.concatenate([s.ts for s in series])
    row = np.concatenate([np.arange(len(s)) for s in series])
    for j in np.lexsort((sym, ts)):
        s, r = series[int(sym[j])], int(row[j])
        vol = None if s.volume is None else float(s.volume[r])
        yield s.symbol, int(s.ts[r]), float(s.price[r]), vol


def looped(series: list[Series], passes: int | None = None) -> Iterator[Tick]:
    """`interleave(series)` again and again (`passes` times, None: forever). Each pass is
    shifted past the previous one in time and each symbol's prices are scaled to continue
    from where it ended, so a model sees no jump at the seam."""
    start = min(int(s.ts[0]) for s in series)
    end = max(int(s.ts[-1]) for s in series)
    gap = int(np.median(np.concatenate([np.diff(s.ts) for s in series if len(s) > 1])))
    span = end - start + max(gap, 1)
    scale = dict.fromkeys((s.symbol for s in series), 1.0)
    growth = {s.symbol: float(s.price[-1] / s.price[0]) for s in series}
    k = 0
    while passes is None or k < passes:
        for sym, ts, price, vol in interleave(series):
            yield sym, ts + k * span, price * scale[sym], vol
        for sym in scale:
            scale[sym] *= growth[sym]
        k += 1


def synthetic(
    n_symbols: int, n_ticks: int, seed: int = 0, start_ms: int = 1_700_000_000_000
) -> Iterator[Tick]:
    """`n_ticks` round-robin ticks of `n_symbols` random-walk symbols `SYN0000…`, one
    millisecond apart per symbol round (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    names = [f"SYN{i:04d}" for i in range(n_symbols)]
    logp = np.log(rng.uniform(20, 200, n_symbols))
    chunk = 65536
    for base in range(0, n_ticks, chunk):
        n = min(chunk, n_ticks - base)
        steps = rng.normal(0, 1e-3, n)
        vols = rng.integers(1, 1000, n).astype(float)
        for k in range(n):
            i = base + k
            s = i % n_symbols
            logp[s] += steps[k]
            yield names[s], start_ms + (i // n_symbols), float(np.exp(logp[s])), float(vols[k])


@dataclass
class ReplayResult:
    sent: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else float("inf")


class Pacer:
    """Paces a sender at `rate` items/s: `delay(sent, now)` is how long to wait before more.

    A sender that fell behind by up to `max_lag_s` (a GC pause, a slow broker) catches up;
    one further behind (it was paused: SIGSTOP, a laptop lid) carries on at `rate` from
    where it is, so a pause never ends in a burst.
    """

    def __init__(self, rate: float, now: float, max_lag_s: float = 1.0) -> None:
        self.rate, self.max_lag_s = rate, max_lag_s
        self.t0 = now  # when item 0 was due, moved forward after a pause

    def delay(self, sent: int, now: float) -> float:
        """Seconds to wait after `sent` items, at `now` (the same clock as `t0`)."""
        ahead = sent / self.rate - (now - self.t0)
        if ahead < -self.max_lag_s:
            self.t0 = now - sent / self.rate
            return 0.0
        return max(ahead, 0.0)


async def publish(
    bootstrap: str,
    topic: str,
    ticks: Iterator[Tick],
    *,
    rate: float | None = None,
    total: int | None = None,
    progress: bool = True,
    chunk: int = 2000,
) -> ReplayResult:
    """Send ticks to `topic` (partition by the key's murmur2 hash, as Kafka's Java client
    does), at `rate` ticks/s (`Pacer`: after a pause it carries on at that rate, no burst)
    or as fast as possible (`rate=None`)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,  # a retry after a broker outage must not duplicate ticks
        linger_ms=0,
        max_batch_size=1 << 20,
    )
    await producer.start()
    sent = 0
    t0 = time.perf_counter()
    pacer = Pacer(rate, t0) if rate is not None else None
    bar = tqdm(total=total, unit="tick", disable=not progress, smoothing=0.1)
    try:
        n_parts = len(await producer.partitions_for(topic))
        part_of: dict[str, int] = {}
        hasher = DefaultPartitioner()
        all_parts = list(range(n_parts))
        step = chunk if rate is None else max(1, min(chunk, int(rate / 100)))
        pending: list[asyncio.Future[object]] = []
        done = False
        while not done:
            batches: dict[int, object] = {}
            n = 0
            for sym, ts, price, vol in ticks:
                p = part_of.get(sym)
                if p is None:
                    p = part_of[sym] = hasher(sym.encode(), all_parts, all_parts)
                b = batches.get(p)
                if b is None:
                    b = batches[p] = producer.create_batch()
                value = encode(sym, ts, price, vol)
                if b.append(key=sym.encode(), value=value, timestamp=None) is None:  # type: ignore[attr-defined]
                    pending.append(await producer.send_batch(b, topic, partition=p))
                    b = batches[p] = producer.create_batch()
                    b.append(key=sym.encode(), value=value, timestamp=None)  # type: ignore[attr-defined]
                n += 1
                if n == step:
                    break
            else:
                done = True
            for p, b in batches.items():
                if b.record_count():  # type: ignore[attr-defined]
                    pending.append(await producer.send_batch(b, topic, partition=p))
            sent += n
            bar.update(n)
            if len(pending) > 64:
                await asyncio.gather(*pending)
                pending.clear()
            if pacer is not None and (wait := pacer.delay(sent, time.perf_counter())) > 0:
                await asyncio.sleep(wait)
        await asyncio.gather(*pending)
    finally:
        bar.close()
        await producer.stop()
    return ReplayResult(sent, time.perf_counter() - t0)
