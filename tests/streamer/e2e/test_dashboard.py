"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, opens
`/` of a real `tickcast serve` that a real Kafka broker feeds with the bundled `stocks`
ticks while the page watches. The charts must grow from live forecasts with no seq gap, and
every point they draw must be the one published to the `forecasts` topic, the forecast made
at tick i drawn at tick i + 1. A second page loses one message on the way (Playwright routes
its websocket): it must see the gap, resync, and end up drawing the same. The feed wants a
token: the pages pass `?token=` on, and a page without it is refused.

Needs Chromium at /usr/bin/chromium (`make browser`; or TICKCAST_CHROMIUM=path). Set
TICKCAST_SAVE_SCREENSHOT=1 to copy the screenshot to bench/results/dashboard.png.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from model.data import load
from streamer.jobs import replay
from streamer.kafka.local import LocalBroker, free_port
from streamer.settings import Settings
from tests.streamer.harness import (
    ROOT,
    forecasts_of,
    fresh_settings,
    read_topic,
    serve_process,
    wait_serving,
)

CHROMIUM = os.environ.get("TICKCAST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SYMBOLS = ["AAPL", "GOOG", "IBM", "MSFT"]  # the bundled `stocks` series
RATE = 20.0  # ticks/s in all: 5 a second per symbol, so 20 s stay under the 300 points kept
LIVE = 25  # live points each chart must gain
TOKEN = "dashboard-test-token"
BACKLOG = 4 * 150  # sent before the live ticks: full snapshots, past the model's warm-up

pytestmark = pytest.mark.browser  # and kafka, as every test under e2e/


def _ready(port: int, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"/readyz not 200 within {timeout} s")


class Producer(threading.Thread):
    """The stocks series as ticks: BACKLOG flat out (history for the snapshots), then RATE
    a second until stopped. In a thread, with its own event loop."""

    def __init__(self, s: Settings) -> None:
        super().__init__(daemon=True)
        self.s = s
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def ticks(self) -> Iterator[replay.Tick]:
        series = load("stocks")
        start = max(int(x.ts[0]) for x in series)  # from GOOG's first day: all four tick
        for t in replay.interleave(series):
            if self.halt.is_set():
                return
            if t[1] >= start:
                yield t

    async def go(self) -> None:
        ticks = self.ticks()
        for part, rate in ((itertools.islice(ticks, BACKLOG), None), (ticks, RATE)):
            await replay.publish(
                self.s.kafka_bootstrap, self.s.ticks_topic, part, rate=rate, progress=False
            )

    def run(self) -> None:
        try:
            asyncio.run(self.go())
        except BaseException as e:  # reported by the test
            self.error = e

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "the producer did not stop"
        assert self.error is None, f"producer failed: {self.error!r}"


def _hooks(page: Page, charts: bool = False) -> dict[str, Any]:
    """window.tickcast; with `charts`, also each chart's data (`series`), read at once."""
    return dict(
        page.evaluate(
            """(charts) => { const t = window.tickcast; return {
                connected: t.connected, lastSeq: t.lastSeq, gaps: t.gaps, frames: t.frames,
                updates: t.updates, snapshots: t.snapshots, conflated: t.conflated,
                subscribed: t.subscribed, symbols: t.symbols, points: t.points, live: t.live,
                errors: t.errors, closes: t.closes, stats: t.stats,
                series: charts ? Object.fromEntries(t.subscribed.map((s) => [s, t.series(s)]))
                               : null }; }""",
            charts,
        )
    )


def _wait(page: Page, condition: str, timeout_s: float, what: str) -> None:
    try:
        page.wait_for_function(condition, timeout=timeout_s * 1000)
    except PlaywrightTimeout:
        raise AssertionError(f"{what} within {timeout_s} s; page state: {_hooks(page)}") from None


def _drop_one(page: Page, nth: int, ops: list[str]) -> None:
    """Route the page's feed through Playwright and lose the `nth` server message on the
    way (the page must see the seq gap and resync); record the ops the page sends."""

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        count = 0

        def down(message: str | bytes) -> None:
            nonlocal count
            count += 1
            if count != nth:
                ws.send(message)

        def up(message: str | bytes) -> None:
            ops.append(json.loads(message)["op"])
            server.send(message)

        server.on_message(down)
        ws.on_message(up)

    page.route_web_socket(re.compile(r"/ws\b"), route)


def _check_charts(hooks: dict[str, Any], by_key: dict[tuple[str, int], Any]) -> None:
    """Every drawn point is the published one: the price of tick i at x = i, the forecast
    (and interval) made at tick i at x = i + 1, the newest one step ahead; no hole."""
    for sym in SYMBOLS:
        xs, price, fc, lo, hi = hooks["series"][sym]
        assert xs == list(range(xs[0], xs[0] + len(xs))) and len(xs) > LIVE, (sym, xs)
        assert price[-1] is None and fc[-1] is not None, sym
        assert fc[0] is None and None not in price[:-1] and None not in fc[1:], sym
        for k, x in enumerate(xs):
            if price[k] is not None:
                assert price[k] == by_key[(sym, x)]["price"], (sym, x)
            if fc[k] is not None:
                made = by_key[(sym, x - 1)]
                assert (fc[k], lo[k], hi[k]) == (made["forecast"], made["lower"], made["upper"])
        assert len(xs) - 1 == hooks["points"][sym], sym


def test_dashboard_draws_live_forecasts_in_a_real_browser(
    kafka: LocalBroker, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser`", pytrace=False)
    port = free_port()
    s = fresh_settings(kafka.bootstrap, feed_port=port, feed_token=TOKEN)
    log = tmp_path / "serve.log"
    proc = serve_process(s, log)
    producer: Producer | None = None
    problems: list[str] = []
    url = f"http://127.0.0.1:{port}/?token={TOKEN}"  # the page passes the token on to /ws
    try:
        wait_serving(log, timeout=90)
        _ready(port)
        producer = Producer(s)
        producer.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on(
                    "console",
                    lambda m: (
                        problems.append(f"console.{m.type}: {m.text}")
                        if m.type in ("error", "warning")
                        else None
                    ),
                )
                page.goto(url)
                # A second page whose feed loses one message on the way.
                lossy = browser.new_page()
                lossy.on("pageerror", lambda e: problems.append(f"lossy page error: {e}"))
                ops: list[str] = []
                _drop_one(lossy, 12, ops)
                lossy.goto(url)

                # The symbols appear in `list` once their first ticks are served; with four
                # of them the page subscribes to all four, and gets a snapshot of each.
                _wait(
                    page,
                    "window.tickcast.subscribed.length === 4 && window.tickcast.snapshots >= 4",
                    30,
                    "the page subscribed to the four symbols",
                )
                first = _hooks(page)
                assert first["subscribed"] == SYMBOLS
                grew = f"""Object.values(window.tickcast.live).length === 4 &&
                    Object.values(window.tickcast.live).every((n) => n >= {LIVE})"""
                _wait(page, grew, 30, f"every chart gained {LIVE} live points")
                _wait(page, "window.tickcast.stats !== null", 5, "a heartbeat arrived")
                _wait(lossy, "window.tickcast.gaps === 1 && window.tickcast.snapshots >= 8", 10,
                      "the lossy page saw the gap and got the resync's snapshots")  # fmt: skip
                _wait(lossy, grew, 10, f"every chart of the lossy page gained {LIVE} points")
                producer.stop()
                page.wait_for_timeout(1000)  # the last updates reach the pages
                last = _hooks(page, charts=True)
                after_gap = _hooks(lossy, charts=True)
                header_model = page.inner_text("#s-model")
                header_quality = page.inner_text("#s-quality")
                # Without the token the feed refuses the page (1008), which says so.
                stranger = browser.new_page()
                stranger.goto(f"http://127.0.0.1:{port}/")
                _wait(stranger, "window.tickcast.closes.includes(1008)", 10, "a close 1008")
                refused = _hooks(stranger)
                refused_text = stranger.inner_text("#conn-text")
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
        if os.environ.get("TICKCAST_SAVE_SCREENSHOT"):
            shutil.copyfile(shot, ROOT / "bench" / "results" / "dashboard.png")

        # The feed: one connection, consecutive seq, nothing lost, no error replies.
        assert last["connected"] and last["closes"] == [], last["closes"]
        assert last["gaps"] == 0 and last["conflated"] == 0, last
        assert last["errors"] == [], last["errors"]
        assert last["lastSeq"] == last["frames"], (last["lastSeq"], last["frames"])
        assert problems == [], problems
        # The charts grew from live updates, not only from their snapshots.
        for sym in SYMBOLS:
            assert last["live"][sym] >= LIVE, (sym, last["live"])
            snapshot = first["points"][sym] - first["live"][sym]
            assert last["points"][sym] == min(300, snapshot + last["live"][sym]), (first, last)
        # The header shows the server's heartbeat stats.
        stats = last["stats"]
        assert stats["model"] and header_model == stats["model"], (header_model, stats)
        assert stats["symbols"] == 4 and stats["connections"] >= 2, stats
        # ... and the scale-free live quality of the serving version (streamer/quality.py).
        q = stats["quality"]
        assert q["version"] == stats["model"] and q["n"] > 0, q
        assert header_quality.startswith("×") and header_quality.count(" / ") == 2, header_quality
        # The lost message: one gap, one resync, and the page stayed connected.
        assert after_gap["gaps"] == 1 and ops.count("resync") == 1, (after_gap, ops)
        assert after_gap["connected"] and after_gap["errors"] == [], after_gap
        assert after_gap["lastSeq"] == after_gap["frames"] + 1, after_gap
        # No token, no feed.
        assert not refused["connected"] and refused["lastSeq"] == 0, refused
        assert "token" in refused_text, refused_text

        published = forecasts_of(await_topic(s))
        by_key = {(d["symbol"], d["seq"]): d for d in published}
        assert {d["model"] for d in published} == {stats["model"]}, stats
        _check_charts(last, by_key)
        _check_charts(after_gap, by_key)  # the resync filled the hole the lost message left
    finally:
        if producer is not None and producer.is_alive():
            producer.halt.set()
            producer.join(30)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if problems or proc.returncode not in (0, -signal.SIGTERM):
            print(log.read_text(errors="replace")[-4000:])


def await_topic(s: Settings) -> list[Any]:
    return asyncio.run(read_topic(s.kafka_bootstrap, s.forecasts_topic, idle_s=2.0, timeout_s=30))
