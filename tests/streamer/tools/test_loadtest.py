"""The load-test tool: its accounting without sockets, then a real run against a real
`tickcast serve` process on a real broker (a small plan: the tool, not the capacity)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer import cli
from streamer.kafka.local import LocalBroker, free_port
from streamer.tools import loadtest
from streamer.tools.loadtest import ClientBook, Plan, quantile_between, step_stats, sustained
from tests.streamer.harness import fresh_settings, serve_process, wait_serving


def update(seq: int, forecasts: list[tuple[str, int, float]], conflated: int = 0) -> dict[str, Any]:
    m: dict[str, Any] = {"type": "update", "seq": seq,
                         "forecasts": [{"symbol": s, "seq": q, "tick_time": t}
                                       for s, q, t in forecasts]}  # fmt: skip
    if conflated:
        m["conflated"] = conflated
    return m


def test_book_counts_deliveries_latency_and_nothing_lost() -> None:
    b = ClientBook()
    b.on_message({"type": "hello", "seq": 1}, 0)
    b.on_message({"type": "ack", "seq": 2}, 0)
    b.on_message(update(3, [("A", 1, 100.0), ("B", 1, 100.0)]), 110.0)
    b.on_message(update(4, [("A", 2, 200.0)]), 230.0)
    b.on_message({"type": "heartbeat", "seq": 5}, 0)
    assert b.delivered == 3 and b.lat_ms.tolist() == [10.0, 10.0, 30.0]
    assert b.caught_up({"A": 2, "B": 1}, ["A", "B"])
    assert b.lost({"A": 2, "B": 1}, ["A", "B"]) == 0


def test_book_finds_missing_forecasts_and_message_gaps() -> None:
    b = ClientBook()
    b.on_message(update(1, [("A", 1, 0.0)]), 1.0)
    b.on_message(update(2, [("A", 4, 0.0)]), 1.0)  # 2 and 3 never came, none reported
    b.on_message(update(5, [("A", 5, 0.0)]), 1.0)  # messages 3 and 4 are missing
    final = {"A": 6, "B": 2}  # A's 6th never came; B (followed) never arrived at all
    assert not b.caught_up(final, ["A", "B"])
    assert b.seq_gaps == 2
    assert b.lost(final, ["A", "B"]) == (6 - 1 - 2) + 2 + 2


def test_book_accepts_conflation_and_snapshots() -> None:
    b = ClientBook()
    b.on_message({"type": "snapshot", "seq": 1, "symbol": "A",
                  "forecast": {"symbol": "A", "seq": 10, "tick_time": 0.0}}, 5.0)  # fmt: skip
    b.on_message(update(2, [("A", 14, 0.0)], conflated=3), 9.0)  # 11..13 replaced by 14
    assert b.delivered == 1 and b.conflated == 3  # a snapshot is state, not a delivery
    assert b.lost({"A": 14}, ["A"]) == 0
    assert b.lost({"A": 14}, "*") == 0
    b2 = ClientBook()
    b2.on_message(update(1, [("A", 14, 0.0)], conflated=1), 9.0)  # owed 14, saw 1 + 1
    assert b2.lost({"A": 14}, ["A"]) == 12


def test_steps_and_the_sustained_rate() -> None:
    t0 = 1_000_000.0
    tick = np.array([t0 + 10, t0 + 20, t0 + 1500, t0 + 1600, t0 + 2500])
    lat = np.array([5.0, 7.0, 30.0, 90.0, 1.0], np.float32)
    steps = step_stats(tick, lat, t0, 1.0, 3, np.array([t0 + 2600]), np.array([4]))
    assert [s["deliveries_per_s"] for s in steps] == [2.0, 2.0, 1.0]
    assert steps[1]["max_ms"] == 90.0 and steps[2]["conflated"] == 4
    for s, target, made in zip(steps, (100, 200, 300), (100, 199, 300), strict=True):
        s["target_per_s"], s["ticks_per_s"] = target, made
    assert sustained(steps, 50.0) == 100  # step 2's p99 is over 50 ms, step 3 conflated
    steps[1]["p99_ms"] = 10.0
    assert sustained(steps, 50.0) == 200
    steps[0]["ticks_per_s"] = 50  # the producer could not hold the first rate
    assert sustained(steps, 50.0) == 200  # the highest step that held
    steps[1]["ticks_per_s"] = 150
    assert sustained(steps, 50.0) is None


def test_histogram_quantile_between_scrapes() -> None:
    before = [(0.01, 10.0), (0.1, 10.0), (math.inf, 10.0)]
    after = [(0.01, 10.0), (0.1, 110.0), (math.inf, 110.0)]  # 100 new, all in (0.01, 0.1]
    assert quantile_between(before, after, 0.5) == pytest.approx(0.055)
    assert quantile_between(after, after, 0.5) is None


def test_plan_validation_and_ramp() -> None:
    assert loadtest.parse_ramp("1000:3000:1000") == (1000.0, 2000.0, 3000.0)
    with pytest.raises(ValueError, match="START:STOP:STEP"):
        loadtest.parse_ramp("fast")
    with pytest.raises(ValueError, match="per_client"):
        Plan(symbols=5, per_client=6)
    p = Plan(rates=(10.0, 20.0), warmup_s=1.0, step_s=2.0)
    assert loadtest.target_ticks(p, 0.5) == 5 and loadtest.target_ticks(p, 4.0) == 10 + 20 + 20


def test_a_run_against_a_real_serve(kafka: LocalBroker, tmp_path: Path) -> None:
    """Every followed forecast arrives (none lost, none conflated at this load), the rate is
    held, and the report, its JSON and plots are written; through the CLI."""
    feed, metrics = free_port(), free_port()
    s = fresh_settings(kafka.bootstrap, feed_port=feed, metrics_port=metrics, feed_frames_per_s=0.0)
    log = tmp_path / "serve.log"
    proc = serve_process(s, log)
    try:
        wait_serving(log)
        out = tmp_path / "report.json"
        rc = cli.main([
            "loadtest", "--kafka-bootstrap", s.kafka_bootstrap, "--ticks-topic", s.ticks_topic,
            "--feed", f"ws://127.0.0.1:{feed}/ws", "--symbols", "20", "--rate", "400",
            "--seconds", "4", "--warmup", "1", "--clients", "12", "--per-client", "5",
            "--procs", "2", "--json", str(out), "--plots", str(tmp_path / "plots"), "--quiet",
            "--metrics", f"http://127.0.0.1:{metrics}/metrics",
        ])  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(60)
    r = json.loads(out.read_text())
    assert rc == 0, r
    assert r["lost"] == 0 and r["errors"] == 0 and r["seq_gaps"] == 0
    assert r["ticks_sent"] == pytest.approx(400 * 5, rel=0.05)
    assert r["ticks_per_s"] == pytest.approx(400, rel=0.05)
    # Each tick's forecast reaches every client following its symbol, exactly once.
    follows = Plan(symbols=20, clients=12, per_client=5, tag=r["plan"]["tag"]).subscriptions()
    per_symbol = r["ticks_sent"] / 20  # round-robin over the symbols
    assert r["delivered"] + r["conflated"] == pytest.approx(
        sum(len(f) for f in follows) * per_symbol, abs=12 * 5
    )
    for key in ("p50", "p99", "max"):
        assert 0 < r["latency_ms"][key] < 5000
    assert r["server"]["tickcast_tick_to_forecast_seconds"]["p50_ms"] is not None
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "latency.png",
        "histogram.png",
        "throughput.png",
    }
