"""Faults on a real broker: `kill -9` of the server, a broker restart, a second instance
joining and leaving. Every tick still gets exactly one forecast (read_committed), equal to
an uninterrupted run's."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.checkpoint import LoadedModel
from streamer.jobs import replay
from streamer.kafka.cluster import LocalCluster
from streamer.kafka.local import LocalBroker, free_port
from streamer.serve.processor import StreamProcessor
from streamer.settings import Settings
from tests.streamer.harness import (
    check_exactly_once,
    forecasts_of,
    fresh_settings,
    log_tail,
    read_topic,
    reference,
    serve_process,
    stop,
    wait_for_records,
    wait_serving,
)


def wait_serving_after(log: Path, mark: int, parts: int, timeout: float = 180.0) -> None:
    """Block until the log, past byte `mark`, shows a serve process that restored all
    `parts` partitions (it is consuming)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if log.read_bytes()[mark:].decode(errors="replace").count("symbols restored") >= parts:
            return
        time.sleep(0.1)
    raise AssertionError(f"serve did not start consuming in {timeout} s")


def state_records(server: StreamProcessor) -> float:
    """State records the server has written so far."""
    value = server.metrics.registry.get_sample_value("tickcast_state_records_total")
    assert value is not None
    return value


async def stream(s: Settings, n_symbols: int, n_ticks: int, rate: float) -> None:
    await replay.publish(
        s.kafka_bootstrap,
        s.ticks_topic,
        replay.synthetic(n_symbols, n_ticks, seed=7),
        rate=rate,
        progress=False,
    )


def test_kill_9_at_random_points_then_restart(
    kafka: LocalBroker, stocks: LoadedModel, tmp_path: Path
) -> None:
    s = fresh_settings(kafka.bootstrap)
    n = 12000  # 30 s at 400/s: each restart takes ~5-10 s (start, precompile, restore)
    ticks = list(replay.synthetic(6, n, seed=7))
    log = tmp_path / "serve.log"
    rng = random.Random(11)

    async def go() -> list[dict[str, Any]]:
        from streamer.kafka.topics import ensure_topics

        await ensure_topics(s)
        proc = serve_process(s, log)
        await asyncio.to_thread(wait_serving_after, log, 0, s.num_partitions)
        feed = asyncio.create_task(stream(s, 6, n, rate=400))
        kills = 0
        try:
            while kills < 3:
                # Deliberate fault timing, not a wait: kill at a random moment of serving.
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                proc.kill()  # SIGKILL: no cleanup at all
                proc.wait()
                kills += 1
                mark = log.stat().st_size
                proc = serve_process(s, log)
                await asyncio.to_thread(wait_serving_after, log, mark, s.num_partitions)
            await feed
            fc = await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=n, timeout_s=90)
        finally:
            rc = stop(proc)
        assert rc == 0, log_tail(log)
        assert kills == 3
        # Restarts restored state and re-applied ticks between checkpoint and commit.
        replays = re.findall(r"(\d+) symbols restored .*replay (\d+)\.\.(\d+)", log.read_text())
        assert any(int(n) > 0 for n, _, _ in replays), replays
        assert any(int(a) < int(b) for _, a, b in replays), replays
        return forecasts_of(fc)

    fc = asyncio.run(go())
    check_exactly_once(fc, ticks, reference(stocks, ticks, s.num_partitions))


def outage_run(
    s: Settings, ticks: list[replay.Tick], log: Path, down: Callable[[], None],
    up: Callable[[], None], rate: float,
) -> tuple[list[dict[str, Any]], str]:  # fmt: skip
    """Serve a live feed, take (part of) Kafka down mid-stream and bring it back; returns
    the committed forecasts and serve's log."""

    async def go() -> list[dict[str, Any]]:
        from streamer.kafka.topics import ensure_topics

        await ensure_topics(s)
        proc = serve_process(s, log)
        try:
            await asyncio.to_thread(wait_serving, log)
            feed = asyncio.create_task(stream_part(s, ticks, rate=rate))
            # Mid-stream by progress, not by the clock: a third of the forecasts committed.
            await wait_for_records(s.kafka_bootstrap, s.forecasts_topic, len(ticks) // 3,
                                   "a third of the forecasts before the outage")  # fmt: skip
            down()
            await asyncio.sleep(2.0)  # the outage's length (part of the fault, not a wait)
            up()
            await feed
            fc = await read_topic(
                s.kafka_bootstrap, s.forecasts_topic, expect=len(ticks), timeout_s=120
            )
        finally:
            rc = stop(proc)
        assert rc == 0, log_tail(log)
        return forecasts_of(fc)

    fc = asyncio.run(go())
    return fc, log.read_text()


def test_broker_restart_mid_stream(stocks: LoadedModel, tmp_path: Path) -> None:
    broker = LocalBroker(Path(tempfile.mkdtemp(dir=tmp_path)), port=free_port())
    broker.start()
    try:
        s = fresh_settings(broker.bootstrap)
        ticks = list(replay.synthetic(4, 3000, seed=7))
        fc, log = outage_run(s, ticks, tmp_path / "serve.log", broker.stop, broker.start, 600)
        assert "ERROR aiokafka" in log  # it did see the outage
        check_exactly_once(fc, ticks, reference(stocks, ticks, s.num_partitions))
    finally:
        broker.stop()


async def stream_part(s: Settings, ticks: list[replay.Tick], rate: float) -> None:
    await replay.publish(s.kafka_bootstrap, s.ticks_topic, iter(ticks), rate=rate, progress=False)


def test_second_instance_joins_and_leaves(
    kafka: LocalBroker, stocks: LoadedModel, tmp_path: Path
) -> None:
    s = fresh_settings(kafka.bootstrap, num_partitions=4)
    n = 20000
    ticks = list(replay.synthetic(12, n, seed=7))
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"

    async def go() -> list[dict[str, Any]]:
        from streamer.kafka.topics import ensure_topics

        await ensure_topics(s)
        third = n // 3
        a = serve_process(s, log_a, client_id="serve-a")
        b: subprocess.Popen[bytes] | None = None
        try:
            # Paced by progress, not the clock: a alone serves the first third; b joins and
            # both serve the second; a alone again serves the last after b leaves.
            await asyncio.to_thread(wait_serving, log_a)
            await stream_part(s, ticks[:third], rate=1000)
            await wait_for_records(s.kafka_bootstrap, s.forecasts_topic, third, "a's forecasts")
            b = serve_process(s, log_b, client_id="serve-b")
            await asyncio.to_thread(wait_serving, log_b)  # b owns partitions now
            await stream_part(s, ticks[third : 2 * third], rate=1000)
            await wait_for_records(
                s.kafka_bootstrap, s.forecasts_topic, 2 * third, "a's and b's forecasts"
            )
            assert re.search(r"partition \d+: [1-9]\d* symbols restored", log_b.read_text())
            assert stop(b) == 0, log_tail(log_b)
            await stream_part(s, ticks[2 * third :], rate=1000)
            fc = await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=n, timeout_s=90)
        finally:
            if b is not None and b.poll() is None:  # a failed test leaves no process behind
                b.kill()
                b.wait()
            rc = stop(a)
        assert rc == 0, log_tail(log_a)
        return forecasts_of(fc)

    fc = asyncio.run(go())
    check_exactly_once(fc, ticks, reference(stocks, ticks, s.num_partitions))
    by_instance = {d["instance"] for d in fc}
    assert by_instance == {"serve-a", "serve-b"}, by_instance
    # A symbol is served by one instance at a time: its forecasts, in tick order, change
    # hands at most twice (to b when it joins, back to a when it leaves).
    for sym in {d["symbol"] for d in fc}:
        seq = [
            d["instance"]
            for d in sorted((d for d in fc if d["symbol"] == sym), key=lambda d: d["seq"])
        ]
        changes = sum(1 for x, y in itertools.pairwise(seq) if x != y)
        assert changes <= 2, (sym, changes)


def test_a_cluster_node_killed_mid_stream(
    kafka_cluster: LocalCluster, stocks: LoadedModel, tmp_path: Path
) -> None:
    """Three brokers, topics replicated 3× (min.insync 2): kill -9 of one node, which may
    lead partitions or the transaction coordinator, then restart it; nothing is lost."""
    s = fresh_settings(kafka_cluster.bootstrap, replication_factor=3)
    ticks = list(replay.synthetic(6, 4000, seed=7))
    fc, _ = outage_run(
        s, ticks, tmp_path / "serve.log",
        lambda: kafka_cluster.kill_node(0), lambda: kafka_cluster.start_node(0), 500,
    )  # fmt: skip
    check_exactly_once(fc, ticks, reference(stocks, ticks, s.num_partitions))


def test_crash_mid_checkpoint_round_resumes_exactly(
    kafka: LocalBroker, stocks: LoadedModel
) -> None:
    """A checkpoint round spreads a partition's state records over several micro-batches
    and writes its marker (the round's start) with the last. A crash after some of those
    records committed leaves records newer than the marker: the next session replays from
    the marker and must drop the ticks such a record already holds (`skip_applied`), or it
    would apply them twice and every later forecast of that symbol would differ."""
    from streamer.kafka.topics import ensure_topics

    s = fresh_settings(kafka.bootstrap, checkpoint_max_records=1, checkpoint_interval_s=0.3,
                       precompile=False)  # fmt: skip
    # Five ticks per symbol share each timestamp: the stale-timestamp check cannot tell a
    # replayed tick from a new one, only its offset can.
    t0 = 1_700_000_000_000
    ticks = [
        (sym, t0 + (ts - t0) // 5, p, v) for sym, ts, p, v in replay.synthetic(30, 9000, seed=5)
    ]

    async def go() -> list[dict[str, Any]]:
        await ensure_topics(s)
        first = StreamProcessor(s, stocks)
        task = asyncio.create_task(first.run(asyncio.Event()))
        feed = asyncio.create_task(stream_part(s, ticks, rate=900))
        crashed = False
        seen: dict[tuple[int, int], tuple[float, int]] = {}  # round -> (records, batches)
        while not feed.done() and not crashed:  # until a round is half written, committed
            await asyncio.sleep(0.001)
            written: float | None = None  # read only when needed: it collects the registry
            for p, st in list(first.parts.items()):
                if st.round is None or first.counters.batches < 10:
                    continue
                if written is None:
                    written = state_records(first)
                r0, b0 = seen.setdefault((p, st.round_start), (written, first.counters.batches))
                # Two records out and three batches since: the first chunks' transactions
                # have committed (a batch starts sending only after the one before it).
                if written - r0 >= 2 and first.counters.batches - b0 >= 3 and len(st.round) >= 2:
                    task.cancel()  # no graceful checkpoint: the round stays half written
                    crashed = True
                    break
        assert crashed, "no checkpoint round was caught in flight"
        with contextlib.suppress(asyncio.CancelledError):
            await task
        second = StreamProcessor(s, stocks)  # same instance name: fences the first's transaction
        stop = asyncio.Event()
        task = asyncio.create_task(second.run(stop))
        await feed
        fc = await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=len(ticks),
                              timeout_s=120)  # fmt: skip
        stop.set()
        await task
        assert second.counters.replayed > 0
        return forecasts_of(fc)

    fc = asyncio.run(go())
    check_exactly_once(fc, ticks, reference(stocks, ticks, s.num_partitions))
