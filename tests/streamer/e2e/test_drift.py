"""The whole retraining loop on a real broker, under drift: started by hand, and started
by drift detected in the live quality (`tickcast retrain --on-drift`).

A champion fitted on regime one (returns with lag-1 autocorrelation +0.6) serves a stream
that switches to regime two (-0.6). While ticks keep flowing, `tickcast retrain` reads the
recent ticks from the topic, fine-tunes a challenger, promotes it and announces it; the
server swaps mid-stream. Then: one forecast per tick, none lost; every forecast tagged with
the version that made it (the old version's are exactly the old model's); and on the new
regime the new version's live error is below what the old champion makes on the same ticks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model.config import ModelConfig, TrainConfig
from model.data import Series, synthetic
from model.registry import Registry
from model.retrain import RetrainConfig
from model.train import FitResult, fit
from streamer.jobs import replay
from streamer.jobs.retrain import Options, run_once
from streamer.jobs.retrain_loop import RetrainLoop, run_loop
from streamer.kafka.local import LocalBroker
from streamer.serve.processor import StreamProcessor
from streamer.settings import Settings
from tests.streamer.e2e.test_hotswap import live, until
from tests.streamer.harness import Tick, forecasts_of, fresh_settings, read_topic, reference

CONFIG = ModelConfig(layers=2, units=8, dropout=0.1, window=12, features=("ret", "dlogvol"))
TRAIN = TrainConfig(max_steps=150, eval_every=25, batch_size=8, chunks=3, progress=False,
                    max_seconds=None, learning_rate=5e-3)  # fmt: skip
N, HALF, FIRST = 6000, 3000, 3600  # steps per symbol; regime change; streamed before retrain


def rows(series: list[Series], lo: int, hi: int) -> list[Tick]:
    """Rows [lo, hi) of every symbol, in time order (symbols interleaved)."""
    out: list[Tick] = []
    for i in range(lo, hi):
        for s in series:
            vol = None if s.volume is None else float(s.volume[i])
            out.append((s.symbol, int(s.ts[i]), float(s.price[i]), vol))
    return out


def rmse_by(fc: list[dict], price: dict[tuple[str, int], float], pick: object) -> float:
    """RMSE of forecasts (made at seq t, for the symbol's tick t + 1)."""
    err = [
        pick(d) - price[(d["symbol"], d["seq"] + 1)]  # type: ignore[operator]
        for d in fc
        if (d["symbol"], d["seq"] + 1) in price
    ]
    return float(np.sqrt(np.mean(np.square(err))))


@pytest.fixture(scope="module")
def regime_one() -> tuple[list[Series], FitResult]:
    """The drift series, and a champion fitted on their regime one (both tests use it)."""
    series = synthetic(4, N, seed=11, kind="drift")
    head = [dataclasses.replace(s, ts=s.ts[:HALF], price=s.price[:HALF],
                                volume=None if s.volume is None else s.volume[:HALF])
            for s in series]  # fmt: skip
    return series, fit(head, CONFIG, dataclasses.replace(TRAIN, learning_rate=1e-2))


def seeded(
    kafka: LocalBroker, tmp_path: Path, regime_one: tuple[list[Series], FitResult]
) -> tuple[list[Series], Settings, Registry, str]:
    """Fresh topics and a registry whose champion is the regime-one model."""
    series, r = regime_one
    settings = fresh_settings(kafka.bootstrap, registry=str(tmp_path / "reg"), precompile=False)
    reg = Registry(settings.registry)
    v0 = reg.add(r.model, r.stats, {"data": {"source": "drift regime one"}})
    reg.promote(v0, "seed")
    return series, settings, reg, v0


def test_retrain_promotes_and_the_server_swaps_mid_stream_under_drift(
    kafka: LocalBroker, tmp_path: Path, regime_one: tuple[list[Series], FitResult]
) -> None:
    series, settings, reg, v0 = seeded(kafka, tmp_path, regime_one)
    champion = reg.load(v0)
    server = StreamProcessor(settings, champion)
    sent: list[Tick] = []
    swapped_at: list[float] = []
    attempt: dict = {}

    def later() -> Iterator[Tick]:
        for t in rows(series, FIRST, N):
            if swapped_at and time.monotonic() - swapped_at[0] > 3.0:
                return
            sent.append(t)
            yield t

    async def body(follower: object) -> None:
        first = rows(series, 0, FIRST)
        sent.extend(first)
        await replay.publish(settings.kafka_bootstrap, settings.ticks_topic, iter(first),
                             rate=None, progress=False)  # fmt: skip
        await until(lambda: server.counters.forecasts == len(first), 120, "regime one forecast")
        feeder = asyncio.create_task(
            replay.publish(settings.kafka_bootstrap, settings.ticks_topic, later(), rate=100,
                           progress=False)
        )  # fmt: skip
        opts = Options(rc=RetrainConfig(margin=0.01, train=TRAIN), since_ms=int(series[0].ts[HALF]),
                       progress=False, quiet=True)  # fmt: skip
        attempt.update(await asyncio.to_thread(run_once, settings, opts, reg))
        assert attempt["outcome"] == "promoted", attempt
        await until(lambda: server.engine.version != v0, 60, "the swap to the new version")
        swapped_at.append(time.monotonic())
        assert not feeder.done(), "ran out of ticks before the swap: not mid-stream"
        await feeder
        await until(lambda: server.counters.forecasts == len(sent), 60, "every tick forecast")

    asyncio.run(live(settings, server, body))
    v1 = server.engine.version
    assert reg.champion() == v1 and reg.load(v1).metadata.get("parent") in (v0, None)
    fc = forecasts_of(asyncio.run(read_topic(settings.kafka_bootstrap, settings.forecasts_topic,
                                             expect=len(sent))))  # fmt: skip
    keys = {(d["source"]["partition"], d["source"]["offset"]) for d in fc}
    assert len(fc) == len(keys) == len(sent), "one forecast per tick, none lost"
    by_part: dict[int, list[tuple[int, str]]] = {}
    for d in fc:
        by_part.setdefault(d["source"]["partition"], []).append((d["source"]["offset"], d["model"]))
    for part in by_part.values():
        seq = [v for _, v in sorted(part)]
        k = seq.index(v1) if v1 in seq else len(seq)
        assert set(seq[:k]) <= {v0} and set(seq[k:]) <= {v1}
    ref = reference(champion, sent, settings.num_partitions)  # the old champion, uninterrupted
    old = [d for d in fc if d["model"] == v0]
    assert all(abs(d["forecast"] - ref[(d["symbol"], d["seq"])][0])
               <= 1e-5 * abs(ref[(d["symbol"], d["seq"])][0]) for d in old)  # fmt: skip
    new = [d for d in fc if d["model"] == v1]
    assert len(new) >= 200, len(new)
    price = {(d["symbol"], d["seq"]): d["price"] for d in fc}
    e_new = rmse_by(new, price, lambda d: d["forecast"])
    e_old = rmse_by(new, price, lambda d: ref[(d["symbol"], d["seq"])][0])
    e_pers = rmse_by(new, price, lambda d: d["price"])
    print(f"\nregime two, {len(new)} forecasts after the swap: RMSE new {e_new:.4f}, "
          f"old champion {e_old:.4f}, persistence {e_pers:.4f}; retrain scores "
          f"{attempt.get('scores')}")  # fmt: skip
    assert e_new < e_old


LOOKBACK = 200  # an --on-drift attempt reads the ticks from 200 steps before the change on:
# a fixed window (like --since 2h), which does not tell the job where the change is


def test_drift_triggered_retrain_promotes_after_the_change_and_not_before(
    kafka: LocalBroker, tmp_path: Path, regime_one: tuple[list[Series], FitResult]
) -> None:
    series, settings, reg, v0 = seeded(kafka, tmp_path, regime_one)
    server = StreamProcessor(settings, reg.load(v0))
    sent_steps: list[int] = []
    swapped_at: list[float] = []
    stop_job = threading.Event()
    opts = Options(rc=RetrainConfig(margin=0.01, train=TRAIN), progress=False, quiet=True,
                   since_ms=int(series[0].ts[HALF - LOOKBACK]))  # fmt: skip
    # The attempt starts 15 s (~190 steps) after the detection, so the ticks it trains on
    # hold some of regime two: started at the detection, its training data was all regime
    # one (the newest 20% is the evaluation slice) and promotion a coin flip.
    retrain_job = RetrainLoop(settings, opts, on_drift=True, cooldown_s=2.0, settle_s=15.0,
                              stop_flag=stop_job, registry=reg, from_beginning=True)  # fmt: skip
    job = threading.Thread(target=run_loop, args=(retrain_job,), daemon=True)

    def regime_two() -> Iterator[Tick]:
        for i in range(HALF, N):
            if swapped_at and time.monotonic() - swapped_at[0] > 3.0:
                return
            sent_steps.append(i)
            yield from rows(series, i, i + 1)

    async def body(follower: object) -> None:
        job.start()
        first = rows(series, 0, HALF)  # regime one, as fast as it goes: no alarm allowed
        await replay.publish(settings.kafka_bootstrap, settings.ticks_topic, iter(first),
                             rate=None, progress=False)  # fmt: skip
        await until(lambda: server.counters.forecasts == len(first), 120, "regime one forecast")
        feeder = asyncio.create_task(
            replay.publish(settings.kafka_bootstrap, settings.ticks_topic, regime_two(),
                           rate=50, progress=False)
        )  # fmt: skip
        # 240 s of regime two at 50 ticks/s: room for an attempt (~2 min on a loaded 2-core
        # machine) after the detection.
        await until(
            lambda: server.engine.version != v0 or feeder.done(),
            420,
            "a drift-started promotion (or the end of the ticks)",
        )
        swapped_at.append(time.monotonic())
        assert server.engine.version != v0, "no promotion before the ticks ran out"
        await feeder

    try:
        asyncio.run(live(settings, server, body))
    finally:
        stop_job.set()
        job.join(300)
    attempts = reg.attempts()
    assert attempts, "no attempt started"
    triggers = [a["trigger"] for a in attempts]
    assert all(t["reason"] == "drift" for t in triggers), triggers
    detected_at = [int(np.searchsorted(series[0].ts, t["last_ts"])) for t in triggers]
    # No false alarm over regime one: every attempt started on a tick of regime two.
    assert min(detected_at) >= HALF, detected_at
    promoted = [a for a in attempts if a["outcome"] == "promoted"]
    assert promoted and promoted[0]["challenger"] == server.engine.version
    k = attempts.index(promoted[0])
    ratios = {n: round(v["error_ratio"], 4) for n, v in promoted[0]["scores"].items()
              if "error_ratio" in v}  # fmt: skip
    print(f"\n--on-drift: regime change at step {HALF} (4 symbols a step); attempts started at "
          f"steps {detected_at} ({[a['outcome'] for a in attempts]}); first detection "
          f"{detected_at[0] - HALF} steps ({4 * (detected_at[0] - HALF)} ticks) after the "
          f"change; the promoting attempt started {detected_at[k] - HALF} steps after it; "
          f"fed up to step {sent_steps[-1]}; error ratios {ratios}")  # fmt: skip
