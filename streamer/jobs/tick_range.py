"""Read a time range of the ticks topic into one `Series` per symbol (what the retrain
job fits and scores on).

Time ranges apply to the tick's own `ts` (epoch ms; `since` inclusive, `until` exclusive).
Reading starts, per partition, at the first record whose Kafka timestamp is at most
`SEEK_SLACK_MS` before `since` (a tick is published after it happens; ticks published more
than that long before their own `ts` would be missed) and stops at the end offsets taken
when the read starts.

May import aiokafka, `model.data` and `streamer.core.ticks`; nothing from serve/.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from tqdm import tqdm

from model.data import Series
from streamer.core.ticks import Format, decode
from streamer.kafka.topics import partitions_of, read_to_end

__all__ = ["SEEK_SLACK_MS", "ReadResult", "group_series", "read_ticks"]

log = logging.getLogger(__name__)

SEEK_SLACK_MS = 3_600_000


@dataclass
class ReadResult:
    """What a read of the ticks topic gave: series per symbol and the counts of the rest."""

    series: list[Series]
    records: int = 0  # records read from Kafka
    ticks: int = 0  # valid ticks in range, kept
    malformed: dict[str, int] = field(default_factory=dict)  # reason -> records skipped
    stale: int = 0  # ts not after the symbol's previous kept tick
    out_of_range: int = 0  # valid ticks outside [since, until)

    def describe(self) -> str:
        bad = sum(self.malformed.values())
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.malformed.items()))
        return (
            f"{self.records} records: {self.ticks} ticks of {len(self.series)} symbol(s) kept, "
            f"{bad} malformed{f' ({why})' if why else ''}, {self.stale} stale, "
            f"{self.out_of_range} outside the range"
        )


def group_series(
    symbols: list[str], ts: list[int], price: list[float], volume: list[float]
) -> tuple[list[Series], int]:
    """Ticks in topic order → one `Series` per symbol (first-seen order) and the number of
    ticks dropped because their ts was before the symbol's previous kept tick (the engine's
    rule; equal timestamps are kept, as the file readers keep them). Volume: NaN = absent,
    and it stays absent (never 0); a symbol with no volume at all gets None."""
    rows: dict[str, list[int]] = {}
    last: dict[str, int] = {}
    stale = 0
    for i, (sym, t) in enumerate(zip(symbols, ts, strict=True)):
        prev = last.get(sym)
        if prev is not None and t < prev:
            stale += 1
            continue
        last[sym] = t
        rows.setdefault(sym, []).append(i)
    ts_a, p_a, v_a = (np.asarray(ts, np.int64), np.asarray(price, np.float64),
                      np.asarray(volume, np.float64))  # fmt: skip
    out = []
    for sym, idx in rows.items():
        ix = np.asarray(idx)
        v = v_a[ix]
        vol = None if np.isnan(v).all() else v
        out.append(Series(sym, ts_a[ix], p_a[ix], vol))
    return out, stale


async def read_ticks(
    bootstrap: str,
    topic: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    progress: bool = True,
    timeout_s: float = 60.0,
    fmt: Format | None = None,
) -> ReadResult:
    """Every tick of `topic` with `since_ms <= ts < until_ms` (either bound optional), up to
    the end offsets at the start of the call, decoded with `streamer.core.ticks.decode`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    symbols: list[str] = []
    tss: list[int] = []
    prices: list[float] = []
    vols: list[float] = []
    res = ReadResult(series=[])
    try:
        parts = await partitions_of(consumer, topic)
        if not parts:
            log.warning("topic %s does not exist (or has no partitions): no ticks", topic)
            return res
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        begin = await consumer.beginning_offsets(tps)
        start = dict(begin)
        if since_ms is not None:
            found = await consumer.offsets_for_times(
                {tp: max(since_ms - SEEK_SLACK_MS, 0) for tp in tps}
            )
            for tp in tps:
                got = found.get(tp)
                start[tp] = end[tp] if got is None else max(got.offset, begin[tp])
        for tp in tps:
            consumer.seek(tp, start[tp])
        bar = tqdm(total=sum(end[tp] - start[tp] for tp in tps), desc=f"reading {topic}",
                   unit="rec", disable=not progress, leave=False)  # fmt: skip

        def take(_: TopicPartition, recs: list[Any]) -> None:
            good, bad = decode([r.value for r in recs], [r.key for r in recs], fmt)
            res.records += len(recs)
            for b in bad:
                res.malformed[b.reason] = res.malformed.get(b.reason, 0) + 1
            for sym, t, p, v in zip(good.symbols, good.ts, good.price, good.volume,
                                    strict=True):  # fmt: skip
                if (since_ms is not None and t < since_ms) or (
                    until_ms is not None and t >= until_ms
                ):
                    res.out_of_range += 1
                    continue
                symbols.append(sym)
                tss.append(t)
                prices.append(p)
                vols.append(v)
            bar.update(len(recs))

        await read_to_end(consumer, tps, take, end=end, stall_s=timeout_s, max_records=50_000)
        bar.close()
    finally:
        await consumer.stop()
    res.series, res.stale = group_series(symbols, tss, prices, vols)
    res.ticks = sum(len(s) for s in res.series)
    return res
