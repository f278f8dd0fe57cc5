"""Two instances on a real broker, one of them frozen (SIGSTOP) past the session timeout or
killed (-9) while ticks flow. The survivor takes the partitions over within the session
timeout + 2 s, a thawed zombie commits nothing, and every tick still gets exactly one
committed forecast (read_committed), equal to an uninterrupted run's."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from model.checkpoint import LoadedModel
from streamer.jobs import replay
from streamer.kafka.local import LocalBroker
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
    wait_serving,
)

SESSION_TIMEOUT_MS = 6000  # the broker's smallest (group.min.session.timeout.ms)
HEARTBEAT_INTERVAL_MS = 1000
RATE = 1500  # ticks/s
N_SYMBOLS = 40


def silences_s(records: list[Any]) -> dict[int, float]:
    """Per forecasts partition: the longest gap between two consecutive committed forecasts
    (their Kafka timestamps, set when the transaction's records are built)."""
    by_part: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r in records:
        by_part[r.partition].append((r.offset, r.timestamp))
    out = {}
    for p, recs in sorted(by_part.items()):
        stamps = [t for _, t in sorted(recs)]
        gap, at = max(((b - a, a) for a, b in itertools.pairwise(stamps)), default=(0, 0))
        out[p] = gap / 1000
        when = time.strftime("%H:%M:%S", time.gmtime(at / 1000)) + f".{at % 1000:03d}"
        print(f"partition {p}: longest silence {gap / 1000:.2f} s from {when}")
    return out


def two_instances(
    s: Settings, n: int, tmp_path: Path, fault: str, fault_after_s: float, freeze_s: float = 0
) -> tuple[list[Any], str]:
    """Serve `n` ticks at RATE with instances a and b; `fault` ("freeze" or "kill") hits a
    `fault_after_s` into the stream. Returns the committed forecast records and a's log."""
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    group = {
        "session_timeout_ms": str(SESSION_TIMEOUT_MS),
        "heartbeat_interval_ms": str(HEARTBEAT_INTERVAL_MS),
    }

    async def go() -> list[Any]:
        from streamer.kafka.topics import ensure_topics

        await ensure_topics(s)
        a = serve_process(s, log_a, client_id="serve-a", **group)
        b = serve_process(s, log_b, client_id="serve-b", **group)
        try:
            await asyncio.to_thread(wait_serving, log_a)
            await asyncio.to_thread(wait_serving, log_b)
            await asyncio.sleep(2.0)  # the rebalance that gave b its share has settled
            feed = asyncio.create_task(
                replay.publish(
                    s.kafka_bootstrap, s.ticks_topic, replay.synthetic(N_SYMBOLS, n, seed=7),
                    rate=RATE, progress=False,
                )
            )  # fmt: skip
            await asyncio.sleep(fault_after_s)
            if fault == "freeze":
                a.send_signal(signal.SIGSTOP)
                await asyncio.sleep(freeze_s)
                a.send_signal(signal.SIGCONT)
            else:
                a.kill()
                a.wait()
            await feed
            fc = await read_topic(s.kafka_bootstrap, s.forecasts_topic, expect=n, timeout_s=120)
        finally:
            rc_b = stop(b)
            rc_a = stop(a) if a.poll() is None else 0
        assert rc_b == 0, log_tail(log_b)
        assert rc_a == 0, log_tail(log_a)
        return fc

    return asyncio.run(go()), log_a.read_text(errors="replace")


@pytest.mark.kafka
def test_zombie_frozen_past_session_timeout_commits_nothing(
    kafka: LocalBroker, stocks: LoadedModel, tmp_path: Path
) -> None:
    """a is frozen for 16 s (longer than any session timeout here), b takes a's partitions
    over; thawed, a's batch in flight must abort (its producers are fenced), a drops the
    partitions' state and rejoins. Before per-partition transactional ids, a committed its
    batch in flight and its revocation checkpoint after b owned the partitions: duplicates."""
    s = fresh_settings(kafka.bootstrap, num_partitions=4)
    n = RATE * 26
    ticks = list(replay.synthetic(N_SYMBOLS, n, seed=7))
    records, log_a = two_instances(s, n, tmp_path, "freeze", 3.0, freeze_s=16.0)
    silence = silences_s(records)
    print(f"freeze: longest silence per partition (s): {silence}")
    fc = forecasts_of(records)
    check_exactly_once(fc, ticks, reference(stocks, ticks, s.num_partitions))
    assert "fenced" in log_a, log_a[-3000:]
    assert {d["instance"] for d in fc} == {"serve-a", "serve-b"}


@pytest.mark.kafka
def test_kill_9_of_one_instance_fails_over_within_session_timeout(
    kafka: LocalBroker, stocks: LoadedModel, tmp_path: Path
) -> None:
    """a is killed with -9 while ticks flow: b takes its partitions over as soon as the
    group coordinator expires a's session, and b's producers fence a's (aborting its open
    transaction at once, no wait for the transaction timeout)."""
    s = fresh_settings(kafka.bootstrap, num_partitions=4)
    n = RATE * 18
    ticks = list(replay.synthetic(N_SYMBOLS, n, seed=7))
    records, _ = two_instances(s, n, tmp_path, "kill", 3.0)
    silence = silences_s(records)
    print(f"kill: longest silence per partition (s): {silence}")
    fc = forecasts_of(records)
    check_exactly_once(fc, ticks, reference(stocks, ticks, s.num_partitions))
    limit = SESSION_TIMEOUT_MS / 1000 + 2.0
    assert max(silence.values()) <= limit, silence
