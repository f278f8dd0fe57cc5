"""The server on a real Kafka broker: one forecast per tick equal to offline, bad ticks in the
dead-letter topic with reasons, metrics scraped over HTTP."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model import data
from model.checkpoint import LoadedModel
from model.evaluate import scale_free
from model.quality import Quality
from streamer.core.ticks import REASONS, encode
from streamer.feed.hub import Hub
from streamer.jobs import replay
from streamer.kafka.local import LocalBroker, free_port
from streamer.metrics import Metrics, close_http, serve_http
from streamer.serve.processor import StreamProcessor
from streamer.settings import Settings
from tests.polling import until
from tests.streamer.core.test_engine import head, offline
from tests.streamer.harness import (
    Tick,
    check_exactly_once,
    forecasts_of,
    fresh_settings,
    partition_of,
    produce_raw,
    read_topic,
    reference,
    tick_records,
)


async def serve_until(server: StreamProcessor, done: Any, timeout: float = 120.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        # A server that stopped early ends the wait too: awaiting its task raises its error.
        await until(lambda: done() or task.done(), timeout, "the server to finish the test's ticks")
    finally:
        stop.set()
        await task


@pytest.mark.parametrize("exactly_once", [True, False])
def test_clean_run_one_forecast_per_tick_equal_to_offline(
    kafka: LocalBroker, stocks: LoadedModel, exactly_once: bool
) -> None:
    series = head(data.load("stocks"), 180)
    ticks: list[Tick] = list(replay.interleave(series))
    s = fresh_settings(kafka.bootstrap, exactly_once=exactly_once)
    hub = Hub()
    seen: list[bytes] = []
    hub.subscribe(lambda symbols, values: seen.extend(values))
    metrics = Metrics()
    port = free_port()
    http = serve_http(metrics, "127.0.0.1", port)

    async def go() -> list[dict[str, Any]]:
        await produce_raw(s, tick_records(ticks))
        server = StreamProcessor(s, stocks, hub=hub, metrics=metrics)
        await serve_until(server, lambda: server.counters.forecasts >= len(ticks))
        return forecasts_of(
            await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=len(ticks))
        )

    try:
        fc = asyncio.run(go())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            scrape = r.read().decode()
    finally:
        close_http(http)
    check_exactly_once(fc, ticks, reference(stocks, ticks, s.num_partitions))
    # ... and equal to `tickcast evaluate`'s carried-state path, symbol by symbol.
    ref = offline(stocks, series)
    w = stocks.config.window
    for sym_series in series:
        mine = sorted((d for d in fc if d["symbol"] == sym_series.symbol), key=lambda d: d["seq"])
        assert [d["seq"] for d in mine] == list(range(1, len(sym_series) + 1))
        assert all(d["warming"] for d in mine[: w - 1]) and not any(
            d["warming"] for d in mine[w - 1 :]
        )
        got = np.array([[d["forecast"], d["lower"], d["upper"]] for d in mine[w - 1 :]])
        np.testing.assert_allclose(got, ref[sym_series.symbol], rtol=1e-5)
        assert all(d["model"] == stocks.version for d in mine)
        assert all(
            d["source"]["partition"] == partition_of(d["symbol"], s.num_partitions) for d in mine
        )
    assert len(seen) == len(ticks)  # the hub got each forecast once
    # Live scale-free quality equals `tickcast evaluate`'s definition (model.evaluate
    # .scale_free, what its --json `quality` block pools) on the same ticks and forecasts.
    pooled = Quality()
    for sym_series in series:
        rows = np.arange(w - 1, len(sym_series) - 1)
        pooled = pooled + scale_free(sym_series.price, rows, ref[sym_series.symbol][:-1].T, w)[1]
    live = {(s.name, s.labels.get("version")): s.value
            for fam in text_string_to_metric_families(scrape) for s in fam.samples}  # fmt: skip
    v = stocks.version
    assert live[("tickcast_quality_forecasts_total", v)] == pooled.n == 4 * (180 - w)
    for name, want in (
        ("tickcast_live_error_ratio", pooled.error_ratio),
        ("tickcast_live_coverage", pooled.coverage),
        ("tickcast_live_interval_score_ratio", pooled.interval_score_ratio),
    ):
        assert live[(name, v)] == pytest.approx(want, rel=1e-5), name  # fmt: skip
    assert metrics.quality.status(v)["n"] == pooled.n
    assert f"tickcast_ticks_consumed_total {float(len(ticks))}" in scrape
    assert f"tickcast_forecasts_published_total {float(len(ticks))}" in scrape
    for name in ("tickcast_tick_to_forecast_seconds_bucket", "tickcast_step_seconds_count",
                 "tickcast_consumer_lag", "tickcast_live_rmse{forecaster=\"persistence\"}",
                 "tickcast_active_symbols 4.0", "tickcast_model_info"):  # fmt: skip
        assert name in scrape, name


def test_malformed_ticks_go_to_the_dlq_with_reasons(
    kafka: LocalBroker, stocks: LoadedModel
) -> None:
    s = fresh_settings(kafka.bootstrap)
    good = list(replay.synthetic(5, 1500, seed=1))
    rng = np.random.default_rng(0)
    bad_values: list[tuple[bytes | None, bytes | None, str]] = [
        (b"{oops", b"SYN0000", "bad_json"),
        (b"[1]", b"SYN0000", "not_object"),
        (b'{"symbol": "SYN0000", "price": 3.0}', b"SYN0000", "missing_field"),
        (b'{"symbol": "SYN0000", "ts": 1700000000000, "price": [3.0]}', b"SYN0000", "bad_type"),
        (b'{"symbol": "", "ts": 1700000000000, "price": 3.0}', b"", "bad_symbol"),
        (encode("SYN0001", 1700000000000, 3.0), b"SYN0000", "key_mismatch"),
        (b'{"symbol": "SYN0000", "ts": 1700000000000, "price": NaN}', b"SYN0000", "bad_price"),
        (b'{"symbol": "SYN0000", "ts": 1700000000000, "price": -2}', b"SYN0000", "bad_price"),
        (
            b'{"symbol": "SYN0000", "ts": 1700000000000, "price": 2, "volume": -5}',
            b"SYN0000",
            "bad_volume",
        ),
        (b'{"symbol": "SYN0000", "ts": -4, "price": 2}', b"SYN0000", "bad_ts"),
    ]
    records: list[tuple[bytes | None, bytes | None, int | None]] = []
    expected: Counter[str] = Counter()
    for i, t in enumerate(good):
        records.append((t[0].encode(), encode(*t), None))
        if i < 20:
            continue
        # 1,200 bad ticks mixed in: every static reason, stale times, foreign partitions.
        for _ in range(int(rng.integers(0, 2)) + (1 if i % 5 == 0 else 0)):
            kind = int(rng.integers(0, len(bad_values) + 2))
            if kind < len(bad_values):
                value, key, reason = bad_values[kind]
                records.append((key, value, partition_of(t[0], s.num_partitions)))
            elif kind == len(bad_values):
                records.append((t[0].encode(), encode(t[0], t[1] - 50, 9.0), None))
                reason = "stale_ts"
            else:
                other = (partition_of(t[0], s.num_partitions) + 1) % s.num_partitions
                records.append((t[0].encode(), encode(t[0], t[1], 9.0), other))
                reason = "partition_mismatch"
            expected[reason] += 1
    n_bad = sum(expected.values())
    assert n_bad >= 1000 and set(expected) == set(REASONS)

    async def go() -> tuple[list[Any], list[dict[str, Any]]]:
        # Every symbol's first ticks are served before anything arrives on a foreign
        # partition (partitions are not ordered with respect to each other).
        await produce_raw(s, records[:20])
        server = StreamProcessor(s, stocks)
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        try:
            await until(lambda: server.counters.ticks >= 20 or task.done(), 120,
                        "the first 20 ticks to be consumed")  # fmt: skip
            await produce_raw(s, records[20:])
            await until(lambda: server.counters.ticks >= len(records) or task.done(), 300,
                        f"all {len(records)} ticks, good and bad, to be consumed")  # fmt: skip
        finally:
            stop.set()
        await task
        dlq = await read_topic(s.kafka_bootstrap, s.dlq_topic, expect=n_bad)
        fc = await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=len(good))
        return dlq, forecasts_of(fc)

    dlq, fc = asyncio.run(go())
    got = Counter(dict(r.headers)["reason"].decode() for r in dlq)
    assert got == expected
    assert all(dict(r.headers)["detail"] and dict(r.headers)["source"] for r in dlq)
    originals = {v for _, v, _ in records}
    assert all(r.value in originals or r.value == b"" for r in dlq)  # the original bytes
    check_exactly_once(fc, good, reference(stocks, good, s.num_partitions))


def test_settings_reach_the_server(kafka: LocalBroker, stocks: LoadedModel) -> None:
    s: Settings = replace(fresh_settings(kafka.bootstrap), max_symbols=3)
    ticks = list(replay.synthetic(5, 50))

    async def go() -> StreamProcessor:
        await produce_raw(s, tick_records(ticks))
        server = StreamProcessor(s, stocks)
        await serve_until(server, lambda: server.counters.ticks >= len(ticks))
        return server

    server = asyncio.run(go())
    assert len(server.engine) == 3  # the bound holds; the others were evicted
    assert server.metrics.registry.get_sample_value("tickcast_evictions_total") > 0
    assert any(e["type"] == "evicted" for e in server.hub.events)


def test_replay_cli_publishes_a_bundled_series_in_time_order(kafka: LocalBroker) -> None:
    from model.data import load
    from streamer.cli import main

    s = fresh_settings(kafka.bootstrap)
    series = load("stocks")
    total = sum(len(x) for x in series)
    rc = main(["replay", "--data", "stocks", "--quiet", "--kafka-bootstrap", s.kafka_bootstrap,
               "--ticks-topic", s.ticks_topic,
               "--num-partitions", str(s.num_partitions)])  # fmt: skip
    assert rc == 0
    recs = asyncio.run(read_topic(s.kafka_bootstrap, s.ticks_topic, expect=total))
    assert len(recs) == total
    by_symbol: dict[str, list[int]] = {}
    for r in recs:
        d = orjson.loads(r.value)
        assert r.key == d["symbol"].encode()
        assert r.partition == partition_of(d["symbol"], s.num_partitions)
        by_symbol.setdefault(d["symbol"], []).append(d["ts"])
    assert {k: len(v) for k, v in by_symbol.items()} == {x.symbol: len(x) for x in series}
    assert all(v == sorted(v) for v in by_symbol.values())


def test_a_fenced_processor_drops_its_partitions_and_rejoins(
    kafka: LocalBroker, stocks: LoadedModel
) -> None:
    """Another owner's producers fence the processor's mid-stream (what a new owner does to
    a zombie): its next commit aborts, it counts the fence, drops the partitions' state,
    starts a new session and restores; every tick still has exactly one forecast."""
    from aiokafka import AIOKafkaConsumer

    from streamer.serve.publish import Publisher

    s = fresh_settings(kafka.bootstrap, precompile=False)
    ticks = list(replay.synthetic(6, 3000, seed=3))
    metrics = Metrics()

    async def go() -> tuple[StreamProcessor, list[dict[str, Any]]]:
        server = StreamProcessor(s, stocks, metrics=metrics)
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        feed = asyncio.create_task(
            replay.publish(s.kafka_bootstrap, s.ticks_topic, iter(ticks), rate=600,
                           progress=False)
        )  # fmt: skip
        while server.counters.forecasts < 600:
            await asyncio.sleep(0.05)
        client = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap)
        await client.start()
        usurper = Publisher(s, client, client, Metrics())
        await usurper.start()
        await usurper.open(list(range(s.num_partitions)))  # fences the server's producers
        await usurper.stop()
        await client.stop()
        await feed
        fc = await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=len(ticks))
        stop.set()
        await task
        return server, forecasts_of(fc)

    server, fc = asyncio.run(go())
    check_exactly_once(fc, ticks, reference(stocks, ticks, s.num_partitions))
    assert metrics.fenced._value.get() >= 1
    assert server.counters.sessions >= 2
    assert metrics.rebalances._value.get() >= 2
    assert metrics.assignment_to_publish_seconds._sum.get() > 0
