"""`tickcast run`, the README's main-job command: broker, replay, serve, feed and dashboard
from one command, stopped cleanly by Ctrl-C (SIGINT)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from streamer.kafka.local import free_port
from tests.streamer.harness import ROOT


def wait_for(pattern: str, log: Path, proc: subprocess.Popen[bytes], timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(pattern, log.read_text())
        if m:
            return m.group(1)
        assert proc.poll() is None, f"tickcast run exited:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{log.read_text()[-3000:]}")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.mark.kafka  # `tickcast run` starts its own broker in a subprocess
def test_run_starts_the_whole_product_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    feed_port, metrics_port = free_port(), free_port()
    log = tmp_path / "run.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "run", "--rate", "40",
             "--feed-port", str(feed_port), "--metrics-port", str(metrics_port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
    try:
        workdir = wait_for(r"local Kafka broker in (\S+) \.\.\.", log, proc, 120)
        url = wait_for(r"dashboard: (http://\S+)", log, proc, 180)
        assert url == f"http://127.0.0.1:{feed_port}/"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"uPlot" in r.read()

        async def watch() -> list[dict[str, object]]:
            got: list[dict[str, object]] = []
            async with connect(f"ws://127.0.0.1:{feed_port}/ws") as ws:
                await ws.send('{"op": "subscribe", "symbols": "*"}')
                while len(got) < 20:
                    msg = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
                    if msg["type"] == "update":
                        got += msg["forecasts"]
                # Let a heartbeat fold the feed's counters into the metrics.
                while orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "heartbeat":
                    pass
                m = scrape(metrics_port)
                assert m["tickcast_feed_connections"] == 1
                assert m["tickcast_feed_deliveries_total"] >= 20
            return got

        got = asyncio.run(watch())
        assert {f["symbol"] for f in got} <= {"AAPL", "GOOG", "IBM", "MSFT"}
        assert all(f["lower"] <= f["forecast"] <= f["upper"] for f in got)  # type: ignore[operator]
        m = scrape(metrics_port)
        assert m["tickcast_ticks_consumed_total"] >= 20
        assert m["tickcast_forecasts_published_total"] >= 20
        with urllib.request.urlopen(f"http://127.0.0.1:{feed_port}/readyz", timeout=10) as r:
            assert r.status == 200

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "stopped: server, replay and broker" in text
    assert "Traceback" not in text, text[-3000:]
    assert not Path(workdir).exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert workdir not in ps.stdout  # the broker is gone too
