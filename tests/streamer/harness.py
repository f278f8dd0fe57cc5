"""Helpers for the tests that run the stream against a real Kafka broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from model.checkpoint import LoadedModel
from streamer.core.engine import Engine
from streamer.core.ticks import decode, encode
from streamer.kafka.topics import ensure_topics
from streamer.settings import Settings
from tests.polling import negative_window

ROOT = Path(__file__).resolve().parents[2]
Tick = tuple[str, int, float, float | None]


def fresh_settings(bootstrap: str, **kw: Any) -> Settings:
    """Settings with topics and group unique to one test."""
    tag = uuid.uuid4().hex[:8]
    base = Settings(
        kafka_bootstrap=bootstrap,
        ticks_topic=f"ticks-{tag}",
        forecasts_topic=f"forecasts-{tag}",
        dlq_topic=f"dlq-{tag}",
        state_topic=f"state-{tag}",
        models_topic=f"models-{tag}",
        group_id=f"g-{tag}",
        num_partitions=3,
        metrics_port=0,
        feed_port=0,  # no websocket feed unless a test asks for one (ports would clash)
        checkpoint_interval_s=0.5,
        checkpoint_max_records=3,  # checkpoint rounds span several micro-batches in every test
    )
    return replace(base, **kw)


def partition_of(symbol: str, n: int) -> int:
    parts = list(range(n))
    return int(DefaultPartitioner()(symbol.encode(), parts, parts))


async def produce_raw(
    settings: Settings, records: Iterable[tuple[bytes | None, bytes | None, int | None]]
) -> None:
    """Send (key, value, partition or None: by key) records in order."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        futs = []
        for key, value, part in records:
            if part is None:
                part = partition_of(key.decode() if key else "", settings.num_partitions)
            futs.append(await producer.send(settings.ticks_topic, value, key=key, partition=part))
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def tick_records(ticks: Iterable[Tick]) -> list[tuple[bytes | None, bytes | None, int | None]]:
    return [(t[0].encode(), encode(*t), None) for t in ticks]


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    idle_s: float = 3.0,
    timeout_s: float = 120.0,
) -> list[Any]:
    """Every committed record of a topic: until `expect` are read, or nothing new arrives
    for `idle_s` once the end is reached."""
    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await c.start()
    out: list[Any] = []
    t0 = last = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout_s:
            got = await c.getmany(timeout_ms=200)
            for recs in got.values():
                out += recs
                last = time.monotonic()
            if expect is not None and len(out) >= expect:
                await negative_window(0.5, "duplicate records")  # the caller counts them
                for recs in (await c.getmany(timeout_ms=300)).values():
                    out += recs
                break
            if expect is None and time.monotonic() - last > idle_s:
                break
    finally:
        await c.stop()
    return out


async def wait_for_records(
    bootstrap: str,
    topic: str,
    n: int,
    what: str,
    *,
    timeout_s: float = 120.0,
) -> None:
    """Block until `n` committed records of `topic` are readable: a stream's progress, to
    place a fault mid-stream by work done rather than by the clock. AssertionError naming
    `what` after `timeout_s`."""
    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await c.start()
    seen, deadline = 0, time.monotonic() + timeout_s
    try:
        while seen < n:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s:g} s waiting for {what} ({seen} of {n} records)"
                )
            for recs in (await c.getmany(timeout_ms=200)).values():
                seen += len(recs)
    finally:
        await c.stop()


def forecasts_of(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


def reference(
    pred: LoadedModel, ticks: list[Tick], n_partitions: int
) -> dict[tuple[str, int], tuple[float, float, float, bool]]:
    """An uninterrupted in-process run: {(symbol, seq): (forecast, lower, upper, warming)}."""
    eng = Engine(pred)
    out: dict[tuple[str, int], tuple[float, float, float, bool]] = {}
    for i in range(0, len(ticks), 500):
        part = ticks[i : i + 500]
        good, bad = decode([encode(*t) for t in part], [t[0].encode() for t in part])
        assert bad == []
        p = np.asarray([partition_of(t[0], n_partitions) for t in part], np.int32)
        f = eng.apply(good, p, np.arange(i, i + len(part))).forecasts
        for j, sym in enumerate(f.symbols):
            out[(sym, int(f.seq[j]))] = (
                float(f.forecast[j]),
                float(f.lower[j]),
                float(f.upper[j]),
                bool(f.warming[j]),
            )
    return out


def wait_serving(log: Path, timeout: float = 180.0) -> None:
    """Block until a serve process logs that it owns partitions (it restored them)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if log.exists() and "symbols restored" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"serve did not start consuming in {timeout} s")


def stop(p: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM a serve process and wait for it; its exit code."""
    p.send_signal(signal.SIGTERM)
    return p.wait(timeout)


def log_tail(log: Path) -> str:
    """The last 3,000 characters of a process log, for an assertion message."""
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def serve_process(settings: Settings, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """`tickcast serve` in its own process, configured through TICKCAST_* variables."""
    env = dict(os.environ)
    for name, value in vars(settings).items():
        env["TICKCAST_" + name.upper()] = str(value)
    env.update({"TICKCAST_" + k.upper(): v for k, v in extra.items()})
    env["JAX_PLATFORMS"] = "cpu"
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def check_exactly_once(
    fc: list[dict[str, Any]],
    ticks: list[Tick],
    ref: dict[tuple[str, int], tuple[float, float, float, bool]],
) -> None:
    """One forecast per tick, each equal to the uninterrupted run's."""
    keys = [(d["source"]["partition"], d["source"]["offset"]) for d in fc]
    assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} duplicate forecasts"
    assert len(fc) == len(ticks), f"{len(fc)} forecasts for {len(ticks)} ticks"
    got = {
        (d["symbol"], d["seq"]): (d["forecast"], d["lower"], d["upper"], d["warming"]) for d in fc
    }
    assert set(got) == set(ref), (sorted(set(got) - set(ref))[:5], sorted(set(ref) - set(got))[:5])
    worst = max(
        abs(g - r) / abs(r) for k, v in ref.items() for g, r in zip(got[k][:3], v[:3], strict=True)
    )
    assert worst <= 1e-5, f"largest relative difference {worst}"
    assert all(got[k][3] == v[3] for k, v in ref.items())  # warming flags
