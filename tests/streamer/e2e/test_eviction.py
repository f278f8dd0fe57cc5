"""Eviction on a real Kafka broker: symbols pausing longer than `idle_evict_s`, twice as
many symbols as device slots cycling, a host cache smaller still (states come back from the
state topic), and a restart in the middle. Every consumed tick ends as exactly one committed
forecast or dead letter, every forecast equals an uninterrupted run's with ample slots and
no idle limit, `seq` is continuous and only each symbol's first window is `warming`."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.checkpoint import LoadedModel
from streamer.jobs import replay
from streamer.kafka.local import LocalBroker
from streamer.kafka.topics import ensure_topics
from streamer.serve.processor import StreamProcessor
from streamer.settings import Settings
from tests.streamer.harness import (
    Tick,
    check_exactly_once,
    forecasts_of,
    fresh_settings,
    produce_raw,
    read_topic,
    reference,
    serve_process,
    tick_records,
    wait_serving,
)


def waves(n_symbols: int, plan: list[tuple[range, int]], seed: int = 5) -> list[list[Tick]]:
    """Round-robin ticks of random-walk symbols, one wave per (symbols, ticks each), on one
    clock (ms apart)."""
    rng = np.random.default_rng(seed)
    logp = np.log(rng.uniform(20, 200, n_symbols))
    t = 1_700_000_000_000
    out = []
    for syms, n in plan:
        wave: list[Tick] = []
        for _ in range(n):
            for s in syms:
                logp[s] += rng.normal(0, 1e-3)
                t += 1
                wave.append((f"EV{s:02d}", t, float(np.exp(logp[s])), float(rng.integers(1, 99))))
        out.append(wave)
    return out


async def until(cond: Any, task: asyncio.Task[None], timeout: float = 120.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond() or task.done():
            break
        await asyncio.sleep(0.05)
    assert cond(), "the server did not catch up"


@pytest.mark.kafka
def test_eviction_keeps_every_tick_and_state_across_pauses_and_a_restart(
    kafka: LocalBroker, stocks: LoadedModel
) -> None:
    s: Settings = fresh_settings(
        kafka.bootstrap, max_symbols=8, idle_evict_s=1.0, state_cache_symbols=2
    )
    plan = [
        (range(16), 70),  # 16 symbols cycling through 8 slots; warming ends at tick 60
        (range(0, 16, 2), 20),  # after a pause > idle_evict_s: half of them come back
        (range(16), 20),  # after a restart: all of them
        (range(1, 16, 2), 15),  # another pause, the other half
    ]
    parts = waves(16, plan)
    ticks = [t for wave in parts for t in wave]
    evicted = fetched = 0

    async def phase(
        server: StreamProcessor, task: asyncio.Task[None], wave: list[Tick], done: int
    ) -> int:
        await produce_raw(s, tick_records(wave))
        await until(lambda: server.counters.forecasts >= done + len(wave), task)
        return done + len(wave)

    async def go() -> tuple[list[Any], list[Any]]:
        nonlocal evicted, fetched
        for i, waves_of_run in enumerate([parts[:2], parts[2:]]):
            server = StreamProcessor(s, stocks)
            stop = asyncio.Event()
            task = asyncio.create_task(server.run(stop))
            done = 0
            for j, wave in enumerate(waves_of_run):
                if j:
                    await asyncio.sleep(2.5)  # every symbol idle for longer than 1 s
                done = await phase(server, task, wave, done)
            await asyncio.sleep(1.0)
            stop.set()
            await task
            assert server.counters.rejected == 0, i
            evicted += int(server.metrics.evictions._value.get())
            fetched += int(server.metrics.state_restored._value.get())
        fc = await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=len(ticks))
        dead = await read_topic(s.kafka_bootstrap, s.dlq_topic, idle_s=1.0)
        return fc, dead

    fc, dead = asyncio.run(go())
    assert dead == []
    assert evicted >= 16 and fetched >= 16, (evicted, fetched)
    got = forecasts_of(fc)
    check_exactly_once(got, ticks, reference(stocks, ticks, s.num_partitions))
    w = stocks.config.window
    for sym in sorted({t[0] for t in ticks}):
        mine = sorted((d for d in got if d["symbol"] == sym), key=lambda d: d["seq"])
        assert [d["seq"] for d in mine] == list(range(1, len(mine) + 1)), sym
        assert [d["warming"] for d in mine] == [k < w - 1 for k in range(len(mine))], sym


@pytest.mark.kafka
def test_kill_9_and_a_second_instance_under_eviction_pressure(
    kafka: LocalBroker, stocks: LoadedModel, tmp_path: Path
) -> None:
    """`kill -9` twice at random moments, then a second instance takes partitions over
    (they move with their evicted states), while 16 symbols cycle through 8 slots with
    pauses longer than `idle_evict_s` and a host cache of 2."""
    s: Settings = fresh_settings(
        kafka.bootstrap, num_partitions=4, max_symbols=8, idle_evict_s=1.0, state_cache_symbols=2
    )
    plan = [(range(16), 110), (range(0, 16, 3), 60), (range(16), 40), (range(1, 16, 2), 40)]
    parts = waves(16, plan, seed=9)
    ticks = [t for wave in parts for t in wave]
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    rng = random.Random(5)

    async def feed() -> None:
        for i, wave in enumerate(parts):
            if i:
                await asyncio.sleep(2.0)  # every symbol idle for longer than 1 s
            await replay.publish(s.kafka_bootstrap, s.ticks_topic, iter(wave), rate=300,
                                 progress=False)  # fmt: skip

    async def go() -> list[Any]:
        await ensure_topics(s)
        proc = serve_process(s, log_a)
        b = None
        try:
            await asyncio.to_thread(wait_serving, log_a)
            task = asyncio.create_task(feed())
            for _ in range(2):
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                proc.kill()  # SIGKILL: no cleanup at all
                proc.wait()
                proc = serve_process(s, log_a)
            b = serve_process(s, log_b, client_id="serve-2")
            await task
            return await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=len(ticks),
                                    timeout_s=120)  # fmt: skip
        finally:
            for p in (proc, b):
                if p is not None:
                    p.send_signal(signal.SIGTERM)
                    assert p.wait(60) == 0

    fc = asyncio.run(go())
    dead = asyncio.run(read_topic(s.kafka_bootstrap, s.dlq_topic, idle_s=1.0))
    assert dead == []
    assert "symbols restored" in log_b.read_text(), "the second instance took no partition"
    got = forecasts_of(fc)
    check_exactly_once(got, ticks, reference(stocks, ticks, s.num_partitions))
    for sym in sorted({t[0] for t in ticks}):
        mine = sorted((d for d in got if d["symbol"] == sym), key=lambda d: d["seq"])
        assert [d["seq"] for d in mine] == list(range(1, len(mine) + 1)), sym
