"""In-process fan-out of forecasts: the server publishes each micro-batch here once, after
Kafka has it; the websocket feed (and tests) subscribe. Pure and synchronous: a listener is
a plain callable that must not block (the websocket server's listeners only enqueue).

Forecasts travel as their JSON payloads (the bytes also sent to the `forecasts` topic), so a
feed can forward them without re-encoding. The hub keeps the latest per symbol, so a new
subscriber starts from a snapshot.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from streamer.core.forecasts import POINT_FIELDS

__all__ = ["Hub", "Listener", "SnapshotPoints"]

log = logging.getLogger(__name__)

Listener = Callable[[list[str], list[bytes]], None]


class SnapshotPoints:
    """Each symbol's recent points (price, forecast, interval: `POINT_FIELDS`), the body of
    its snapshot's `history` field: the last `n` of each symbol in one ring array
    `[symbols, n, 5]`, updated once per batch with numpy (no Python loop over points)."""

    def __init__(self, n: int = 120, capacity: int = 64) -> None:
        self.n = n
        self._rows: dict[str, int] = {}
        self._free: list[int] = []
        self._buf = np.zeros((capacity, n, len(POINT_FIELDS)))
        self._count = np.zeros(capacity, np.int64)  # points ever added per row

    def __len__(self) -> int:
        return len(self._rows)

    def _row(self, symbol: str) -> int:
        row = self._rows.get(symbol)
        if row is None:
            if self._free:
                row = self._free.pop()
            else:
                row = len(self._rows)
                if row == len(self._buf):  # grow by doubling
                    self._buf = np.concatenate([self._buf, np.zeros_like(self._buf)])
                    self._count = np.concatenate([self._count, np.zeros_like(self._count)])
            self._count[row] = 0
            self._rows[symbol] = row
        return row

    def add(self, symbols: list[str], points: np.ndarray) -> None:
        """Append `points [len(symbols), 5]`, in order (a symbol may repeat)."""
        if not symbols or self.n == 0:
            return
        rows = np.fromiter((self._row(s) for s in symbols), np.int64, len(symbols))
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        first = np.flatnonzero(np.r_[True, srt[1:] != srt[:-1]])
        size = np.diff(np.r_[first, len(srt)])
        rank = np.arange(len(srt)) - np.repeat(first, size)  # occurrence within the batch
        keep = rank >= np.repeat(size, size) - self.n  # at most the last n per symbol
        idx, r = order[keep], srt[keep]
        self._buf[r, (self._count[r] + rank[keep]) % self.n] = points[idx]
        self._count[srt[first]] += size

    def get(self, symbol: str) -> np.ndarray:
        """The symbol's points, oldest first: `[m, 5]`, m ≤ n (empty if unknown)."""
        row = self._rows.get(symbol)
        if row is None:
            return np.zeros((0, len(POINT_FIELDS)))
        c = int(self._count[row])
        m = min(c, self.n)
        out: np.ndarray = self._buf[row, np.arange(c - m, c) % self.n]
        return out

    def drop(self, symbols: list[str]) -> None:
        for s in symbols:
            row = self._rows.pop(s, None)
            if row is not None:
                self._free.append(row)


class Hub:
    """Latest forecast per symbol, its recent points (for snapshots), and listeners called with each
    batch's forecasts (symbols and their JSON payloads, in order).

    It holds at most `max_symbols` symbols: past that, the least recently published are
    dropped (`latest` is kept in publish order). A symbol the engine evicts from the device
    keeps its place here: its state lives on (`core.persistence`), and so does its chart,
    e.g. over a market's night. Memory: ~5 KB a symbol at 120 snapshot points, plus its
    latest payload (~300 bytes)."""

    def __init__(self, snapshot_points: int = 120, max_symbols: int = 16384) -> None:
        self.latest: dict[str, bytes] = {}  # least recently published first
        self.max_symbols = max_symbols
        self.points = SnapshotPoints(snapshot_points)
        self._listeners: list[Listener] = []
        self.events: list[dict[str, Any]] = []  # announcements (evictions), newest last

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(
        self, symbols: list[str], values: list[bytes], points: np.ndarray | None = None
    ) -> None:
        """One batch's forecasts, in order; `points [n, 5]` (`points_of`) feed `points`."""
        latest = self.latest
        for sym, value in zip(symbols, values, strict=True):
            latest.pop(sym, None)  # to the end: the most recent
            latest[sym] = value
        if len(latest) > self.max_symbols:  # before adding points, so rows are reused
            gone = list(itertools.islice(latest, len(latest) - self.max_symbols))
            for sym in gone:
                del latest[sym]
            self.points.drop(gone)
            if points is not None and len(symbols) > self.max_symbols:  # some of them went
                keep = [k for k, sym in enumerate(symbols) if sym in latest]
                symbols, points = [symbols[k] for k in keep], points[keep]
        if points is not None:
            self.points.add(symbols, points)
        for listener in list(self._listeners):
            try:
                listener(symbols, values)
            except Exception:  # one broken listener must not stop the stream
                log.exception("hub listener failed; removing it")
                self._listeners.remove(listener)

    def announce(self, event: dict[str, Any]) -> None:
        """Record an event (e.g. `{"type": "evicted", "symbols": [...]}`); keeps the last 100."""
        self.events.append(event)
        del self.events[:-100]
