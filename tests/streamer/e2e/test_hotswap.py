"""Hot swap in the live server on a real broker: an announced version is loaded, re-warmed
and swapped in mid-stream with no tick lost; bad versions are refused while the old model
keeps serving."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from model.checkpoint import LoadedModel
from model.config import ModelConfig
from model.lstm import LSTMForecaster
from model.registry import Registry
from model.runtime import enable_compile_cache
from streamer import cli
from streamer.jobs import replay
from streamer.kafka.announcements import announce
from streamer.kafka.local import LocalBroker, free_port
from streamer.serve.follower import ModelFollower
from streamer.serve.processor import StreamProcessor
from streamer.settings import Settings
from tests.polling import until
from tests.streamer.core.test_swap import perturbed
from tests.streamer.harness import (
    Tick,
    forecasts_of,
    fresh_settings,
    read_topic,
    reference,
    serve_process,
    wait_serving,
)

REFUSED = "tickcast_model_refused_total"


def sample(server: StreamProcessor, series: str, reason: str | None = None) -> float:
    """One sample of the server's registry, by its exported name (counters end `_total`)."""
    labels = {"reason": reason} if reason else None
    value = server.metrics.registry.get_sample_value(series, labels)
    assert value is not None, (series, labels)
    return value


async def live(settings: Settings, server: StreamProcessor, body: Any) -> Any:
    """Run the server and its model follower around `body()`."""
    stop = asyncio.Event()
    follower = ModelFollower(settings, server, server.metrics)
    tasks = [asyncio.create_task(server.run(stop)), asyncio.create_task(follower.run(stop))]
    try:
        for _ in range(600):
            if server.ready:
                break
            await asyncio.sleep(0.05)
        assert server.ready, "the server did not start consuming"
        return await body(follower)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def test_swap_mid_stream_loses_no_tick_and_tags_every_forecast(
    kafka: LocalBroker, stocks: LoadedModel, tmp_path: Path
) -> None:
    settings = fresh_settings(kafka.bootstrap, registry=str(tmp_path / "reg"))
    reg = Registry(settings.registry)
    new = perturbed(stocks, "unused")
    v_new = reg.add(new.model, new.stats, {"parent": stocks.version})
    server = StreamProcessor(settings, stocks)
    enable_compile_cache()  # as `tickcast serve` does
    server.engine.precompile()
    sent: list[Tick] = []
    swapped_at: list[float] = []

    def ticks() -> Iterator[Tick]:
        """Synthetic ticks until 2 s after the swap (at most 200,000)."""
        for t in replay.synthetic(40, 200_000, seed=3):
            if swapped_at and time.monotonic() - swapped_at[0] > 2.0:
                return
            sent.append(t)
            yield t

    async def body(follower: ModelFollower) -> None:
        feeder = asyncio.create_task(
            replay.publish(
                settings.kafka_bootstrap, settings.ticks_topic, ticks(), rate=3000, progress=False
            )
        )
        await until(lambda: server.counters.forecasts > 3000, 60, "3,000 forecasts")
        await announce(
            settings.kafka_bootstrap,
            settings.models_topic,
            {"version": v_new, "reason": "test", "scores": {"challenger": 1.0}},
        )
        await until(lambda: server.engine.version == v_new, 120, "the swap to the new version")
        swapped_at.append(time.monotonic())
        await feeder
        await until(lambda: server.counters.forecasts == len(sent), 60, "a forecast per tick sent")

    asyncio.run(live(settings, server, body))
    assert sample(server, "tickcast_model_swaps_total") == 1
    pause = sample(server, "tickcast_model_swap_pause_seconds_sum")
    print(f"\nswap: {len(sent)} ticks, final round {pause * 1000:.1f} ms")
    assert pause < 0.5  # the final round, between batches

    fc = forecasts_of(
        asyncio.run(
            read_topic(settings.kafka_bootstrap, settings.forecasts_topic, expect=len(sent))
        )
    )
    keys = [(d["source"]["partition"], d["source"]["offset"]) for d in fc]
    assert len(fc) == len(sent) == len(set(keys)), "one forecast per tick, none lost"
    # Per ticks partition, in offset order: the old version, then the new, never back.
    by_part: dict[int, list[tuple[int, str]]] = {}
    for d in fc:
        by_part.setdefault(d["source"]["partition"], []).append((d["source"]["offset"], d["model"]))
    n_old = n_new = 0
    for rows in by_part.values():
        seq = [v for _, v in sorted(rows)]
        switch = seq.index(v_new) if v_new in seq else len(seq)
        assert set(seq[:switch]) <= {stocks.version} and set(seq[switch:]) <= {v_new}
        n_old, n_new = n_old + switch, n_new + len(seq) - switch
    assert n_old > 1000 and n_new > 1000, (n_old, n_new)
    # Old-version forecasts are exactly the old model's uninterrupted run; new-version ones
    # come from other weights (they differ from what the old model would have said).
    ref = reference(stocks, sent, settings.num_partitions)
    old = [d for d in fc if d["model"] == stocks.version]
    new_fc = [d for d in fc if d["model"] == v_new]
    assert all(
        abs(d["forecast"] - ref[(d["symbol"], d["seq"])][0])
        <= 1e-5 * abs(ref[(d["symbol"], d["seq"])][0])
        for d in old
    )
    differ = np.mean(
        [
            abs(d["forecast"] - ref[(d["symbol"], d["seq"])][0]) > 1e-4 * abs(d["forecast"])
            for d in new_fc
        ]
    )
    assert differ > 0.95
    # Live error per version is tracked for both.
    assert server.metrics.version_rmse(v_new)["model"] is not None


def _corrupt(path: Path) -> None:
    """Flip bytes in the largest stored weight file (the digest must catch it)."""
    files = sorted(
        (p for p in (path / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = bytearray(files[-1].read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    files[-1].write_bytes(bytes(data))


def test_bad_versions_are_refused_and_the_old_model_keeps_serving(
    kafka: LocalBroker, stocks: LoadedModel, tmp_path: Path
) -> None:
    settings = fresh_settings(kafka.bootstrap, registry=str(tmp_path / "reg"))
    reg = Registry(settings.registry)
    # Corrupt weights; another config (units); other features; a version nobody stored;
    # and an announcement that is not JSON.
    bad = perturbed(stocks, "x")
    v_corrupt = reg.add(bad.model, bad.stats)
    _corrupt(reg.path(v_corrupt))
    small = ModelConfig(
        **{**stocks.config.to_dict(), "units": 8, "features": tuple(stocks.config.features)}
    )
    v_units = reg.add(LSTMForecaster(small, rngs=nnx.Rngs(0)), stocks.stats)
    feats = dataclasses.replace(stocks.config, features=("ret", "dlogvol"))
    v_feats = reg.add(LSTMForecaster(feats, rngs=nnx.Rngs(1)), stocks.stats)
    # A checkpoint directory whose metadata is truncated.
    v_trunc = reg.add(perturbed(stocks, "y", seed=5).model, stocks.stats)
    meta = reg.path(v_trunc) / "metadata.json"
    meta.write_text(meta.read_text()[:40])
    ticks = list(replay.synthetic(10, 4000, seed=4))
    server = StreamProcessor(settings, stocks)

    async def body(follower: ModelFollower) -> None:
        feeder = asyncio.create_task(
            replay.publish(
                settings.kafka_bootstrap,
                settings.ticks_topic,
                iter(ticks),
                rate=1000,
                progress=False,
            )
        )
        await until(lambda: server.counters.forecasts > 200, 60, "200 forecasts")
        for v in (v_corrupt, v_units, v_feats, v_trunc, "20990101T000000Z-deadbeef"):
            before = follower.applied
            await announce(settings.kafka_bootstrap, settings.models_topic, {"version": v})
            handled = f"the follower to handle {v}"
            await until(lambda: follower.applied > before, 60, handled)  # noqa: B023
            assert server.engine.version == stocks.version
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        await producer.send_and_wait(settings.models_topic, b"{not json", key=b"champion")
        await producer.stop()
        await until(lambda: sample(server, REFUSED, "invalid") == 1, 60, "the refusal of non-JSON")
        await feeder
        await until(lambda: server.counters.forecasts == len(ticks), 60, "a forecast per tick")

    asyncio.run(live(settings, server, body))
    assert sample(server, REFUSED, "corrupt") == 2  # flipped weights, truncated metadata
    assert sample(server, REFUSED, "mismatch") == 2  # units, features
    assert sample(server, REFUSED, "missing") == 1
    assert sample(server, "tickcast_model_swaps_total") == 0
    fc = forecasts_of(
        asyncio.run(
            read_topic(settings.kafka_bootstrap, settings.forecasts_topic, expect=len(ticks))
        )
    )
    assert len(fc) == len(ticks)
    assert {d["model"] for d in fc} == {stocks.version}


def test_a_restarted_server_adopts_the_announced_champion(
    kafka: LocalBroker, stocks: LoadedModel, tmp_path: Path
) -> None:
    """The topic is compacted: its latest record is the champion a new instance converges on,
    whatever it was started with."""
    settings = fresh_settings(kafka.bootstrap, registry=str(tmp_path / "reg"))
    reg = Registry(settings.registry)
    a = perturbed(stocks, "a", seed=7)
    v_a = reg.add(a.model, a.stats)
    asyncio.run(announce(settings.kafka_bootstrap, settings.models_topic, {"version": v_a}))
    # Also copy a bundled model in: registry import keeps its version id.
    v_b = reg.import_dir("model/bundled/stocks")
    assert v_b == stocks.version and reg.has(v_b)
    shutil.rmtree(reg.path(v_b))
    server = StreamProcessor(settings, stocks)

    async def body(follower: ModelFollower) -> None:
        await until(lambda: server.engine.version == v_a, 60, "the announced champion")

    asyncio.run(live(settings, server, body))
    assert sample(server, "tickcast_model_swaps_total") == 1


START, ROUND_MS = 1_700_000_000_000, 10_000_000


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("tickcast_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_serve_process_follows_promote_and_rollback_from_the_cli(
    kafka: LocalBroker, stocks: LoadedModel, tmp_path: Path
) -> None:
    """`tickcast serve` as its own process; an operator runs `tickcast models promote V`,
    then `tickcast models rollback`; serve swaps each time (seen on the forecasts topic and
    in a real scrape of its metrics), without a restart."""
    port = free_port()
    settings = fresh_settings(kafka.bootstrap, registry=str(tmp_path / "reg"), metrics_port=port)
    reg = Registry(settings.registry)
    v_stocks = reg.import_dir("model/bundled/stocks")
    reg.promote(v_stocks, "seed")
    other = perturbed(stocks, "unused", seed=9)
    v_new = reg.add(other.model, other.stats, {"parent": v_stocks})
    common = ["--kafka-bootstrap", kafka.bootstrap, "--models-topic", settings.models_topic,
              "--registry", settings.registry]  # fmt: skip
    log = tmp_path / "serve.log"
    proc = serve_process(settings, log)
    try:
        wait_serving(log)

        def publish(seed: int) -> None:
            start = START + seed * ROUND_MS  # later rounds are later in time
            ticks = list(replay.synthetic(8, 800, seed=seed, start_ms=start))
            asyncio.run(replay.publish(settings.kafka_bootstrap, settings.ticks_topic,
                                       iter(ticks), rate=None, progress=False))  # fmt: skip

        def wait_for(cond: Any, timeout: float = 90.0) -> dict[str, float]:
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                m = scrape(port)
                if cond(m):
                    return m
                time.sleep(0.2)
            raise AssertionError(f"metrics never satisfied the condition: {scrape(port)}")

        publish(1)
        wait_for(lambda m: m.get("tickcast_forecasts_published_total", 0) >= 800)
        assert cli.main(["models", "promote", v_new, *common]) == 0
        wait_for(lambda m: m.get("tickcast_model_swaps_total", 0) >= 1)
        publish(2)
        wait_for(lambda m: m.get("tickcast_forecasts_published_total", 0) >= 1600)
        assert cli.main(["models", "rollback", *common]) == 0
        m = wait_for(lambda m: m.get("tickcast_model_swaps_total", 0) >= 2)
        publish(3)
        m = wait_for(lambda m: m.get("tickcast_forecasts_published_total", 0) >= 2400)
        info = [k for k in m if k.startswith("tickcast_model_info")]
        assert len(info) == 1 and f'version="{v_stocks}"' in info[0], info
        assert m['tickcast_model_refused_total{reason="corrupt"}'] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert reg.champion() == v_stocks
    fc = forecasts_of(asyncio.run(read_topic(settings.kafka_bootstrap,
                                             settings.forecasts_topic, expect=2400)))  # fmt: skip
    assert len(fc) == 2400
    # Each round of ticks went out after the swap before it: one version per round.
    served = {r: {d["model"] for d in fc if (d["ts"] - START) // ROUND_MS == r}
              for r in (1, 2, 3)}  # fmt: skip
    assert served == {1: {v_stocks}, 2: {v_new}, 3: {v_stocks}}
