"""Issue 12 on a real broker: every kind of input gives the same ticks and forecasts through
Kafka and `serve` as from a file offline, and `serve --format binance|coinbase|fields:...`
turns an exchange feed into one forecast per trade with nothing dead-lettered."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model import data
from model.checkpoint import LoadedModel
from model.tickfile import ReadOptions, read_ticks
from streamer.core.ticks import decode, make_format
from streamer.kafka.local import LocalBroker
from streamer.metrics import Metrics
from streamer.serve.processor import StreamProcessor
from tests.streamer.core.test_engine import offline
from tests.streamer.formats_cases import (
    FIELDS,
    binance_feed,
    coinbase_feed,
    every_kind,
    fields_feed,
    same,
)
from tests.streamer.harness import forecasts_of, fresh_settings, produce_raw, read_topic
from tests.streamer.serve.test_processor import serve_until


def test_parity_file_path_against_kafka_path_over_every_kind(
    kafka: LocalBroker, stocks: LoadedModel, tmp_path: Path
) -> None:
    records, bad = every_kind()
    f = tmp_path / "kinds.jsonl"
    f.write_bytes(b"\n".join(v for _, v in records) + b"\n")
    got = read_ticks(f)  # the file path: train, evaluate, replay's validation
    series = data.to_series(got)
    s = fresh_settings(kafka.bootstrap, precompile=False)
    metrics = Metrics()

    async def go() -> tuple[list[Any], list[dict[str, Any]], list[Any]]:
        await produce_raw(s, [(k, v, None) for k, v in records])
        server = StreamProcessor(s, stocks, metrics=metrics)
        await serve_until(server, lambda: server.counters.ticks >= len(records))
        ticks = await read_topic(s.kafka_bootstrap, s.ticks_topic, expect=len(records))
        fc = forecasts_of(
            await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=len(got.ticks))
        )
        dead = await read_topic(s.kafka_bootstrap, s.dlq_topic, expect=sum(bad.values()))
        return ticks, fc, dead

    ticks, fc, dead = asyncio.run(go())
    # The records as the broker hands them to serve decode to the file's ticks, value for value.
    good, _ = decode([r.value for r in ticks], [r.key for r in ticks])
    from_kafka = sorted(zip(good.symbols, good.ts, good.price, good.volume, strict=True))
    from_file = sorted((t.symbol, t.ts, t.price, t.volume) for _, t in got.ticks)
    assert len(from_kafka) == len(from_file) == 500
    assert all(
        a[:3] == b[:3] and same(a[3], b[3]) for a, b in zip(from_kafka, from_file, strict=True)
    )
    # One forecast per accepted tick; the rejected ones (no price, year 2255) dead-lettered.
    assert len(fc) == len(got.ticks)
    reasons = sorted(dict(r.headers)["reason"].decode() for r in dead)
    assert reasons == sorted(r for r, n in bad.items() for _ in range(n))
    # Live forecasts equal `tickcast evaluate`'s path on the file, symbol by symbol, from
    # 1e-8 to 1e10 and on the constant series (relative 1e-5: beyond 6 significant digits).
    ref = offline(stocks, series)
    w = stocks.config.window
    for ser in series:
        mine = sorted((d for d in fc if d["symbol"] == ser.symbol), key=lambda d: d["seq"])
        live = np.array([[d["forecast"], d["lower"], d["upper"]] for d in mine[w - 1 :]])
        np.testing.assert_allclose(live, ref[ser.symbol], rtol=1e-5, err_msg=ser.symbol)
        assert np.all(live[:, 1] <= live[:, 2])
    pepe = [d for d in fc if d["symbol"] == "PEPE"]
    assert all(1e-9 < d["forecast"] < 1e-7 for d in pepe)


@pytest.mark.parametrize(
    ("fmt", "feed"), [("binance", binance_feed), ("coinbase", coinbase_feed), (FIELDS, fields_feed)]
)
def test_serve_format_one_forecast_per_trade_none_dead_lettered(
    kafka: LocalBroker, stocks: LoadedModel, fmt: str, feed: Any, tmp_path: Path
) -> None:
    values, n_ticks = feed()
    # An exchange bridge may publish without keys: one partition keeps each symbol in order.
    s = replace(fresh_settings(kafka.bootstrap, precompile=False), format=fmt, num_partitions=1)
    metrics = Metrics()

    async def go() -> tuple[StreamProcessor, list[dict[str, Any]], list[Any]]:
        await produce_raw(s, [(None, v, 0) for v in values])
        server = StreamProcessor(s, stocks, metrics=metrics)
        await serve_until(server, lambda: server.counters.ticks >= len(values))
        fc = forecasts_of(await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=n_ticks))
        dead = await read_topic(s.kafka_bootstrap, s.dlq_topic, idle_s=1.0)
        return server, fc, dead

    server, fc, dead = asyncio.run(go())
    assert len(fc) == n_ticks and dead == []
    assert server.counters.skipped == len(values) - n_ticks and server.counters.rejected == 0
    skipped = {
        r: metrics.registry.get_sample_value("tickcast_ticks_skipped_total", {"reason": r})
        for r in ("ack", "heartbeat", "open_kline", "other_message")
    }
    assert sum(v or 0 for v in skipped.values()) == len(values) - n_ticks
    # The same messages read from a JSON-lines file give the same ticks, in the same order.
    f = tmp_path / "feed.jsonl"
    f.write_bytes(b"\n".join(values) + b"\n")
    file_ticks = [
        (t.symbol, t.ts, t.price) for _, t in read_ticks(f, ReadOptions(format=fmt)).ticks
    ]
    by_symbol = {sym: [t for t in file_ticks if t[0] == sym] for sym in {t[0] for t in file_ticks}}
    for sym, rows in by_symbol.items():
        mine = sorted((d for d in fc if d["symbol"] == sym), key=lambda d: d["seq"])
        assert [(d["symbol"], d["ts"], d["price"]) for d in mine] == rows


def test_serve_refuses_an_unknown_format(kafka: LocalBroker, stocks: LoadedModel) -> None:
    with pytest.raises(ValueError, match="unknown format 'kraken'"):
        StreamProcessor(replace(fresh_settings(kafka.bootstrap), format="kraken"), stocks)
    assert make_format("binance") is make_format("binance")  # built once per spec
