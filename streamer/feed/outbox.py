"""One websocket client's state, without sockets: what it may do (`Limits`), its pending
messages (`Outbox`: control messages in order, forecasts conflated past a limit, snapshots
built when taken) and its subscriptions and rate limit (`Client`).

Pure and synchronous: no asyncio, no sockets. May import `streamer.settings` and the
standard library; `streamer.feed.protocol` drives it, `streamer.feed.server` writes what it
takes to the socket.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamer.settings import Settings

__all__ = ["CONTROL_LIMIT", "SNAPSHOT_CHUNK", "Client", "Limits", "Outbox"]


@dataclass(frozen=True)
class Limits:
    """What one connection may do (`feed_*` settings)."""

    max_symbols: int = 1000
    max_frame: int = 65536  # bytes of one client message
    rate: float = 20.0  # client messages a second (burst 2x)
    queue: int = 5000  # forecasts queued before conflation
    heartbeat_s: float = 1.0
    slow_close_s: float = 5.0
    wildcard: bool = True
    max_connections: int = 2000

    @classmethod
    def of(cls, s: Settings) -> Limits:
        return cls(
            max_symbols=s.feed_max_symbols,
            max_frame=s.feed_max_frame,
            rate=s.feed_client_msgs_per_s,
            queue=s.feed_conflate_after,
            heartbeat_s=s.feed_heartbeat_s,
            slow_close_s=s.feed_slow_close_s,
            wildcard=s.feed_wildcard,
            max_connections=s.feed_max_connections,
        )

    def public(self) -> dict[str, Any]:
        return {
            "max_symbols": self.max_symbols,
            "max_frame": self.max_frame,
            "rate": self.rate,
            "queue": self.queue,
            "slow_close_s": self.slow_close_s,
            "wildcard": self.wildcard,
        }


SNAPSHOT_CHUNK = 64  # snapshots built per take: bounds one take's memory and loop time
CONTROL_LIMIT = 1000  # queued control messages beyond which a client counts as too slow


class Outbox:
    """One client's pending messages: control messages (acks, snapshots, heartbeats, errors)
    in order, then forecasts. Forecasts beyond `limit` are conflated to the latest per
    symbol, and the count replaced is reported in the next update.

    A snapshot is queued as its symbol only and built when taken, so it is always current
    and a symbol has at most one snapshot queued however often a client resyncs."""

    def __init__(self, limit: int) -> None:
        self.seq = 0
        # (type, JSON body without braces and seq), or ("snapshot", symbol)
        self.control: deque[tuple[str, bytes | str]] = deque()
        self.snapshots: set[str] = set()  # symbols with a snapshot queued
        self.syms: list[str] = []
        self.vals: list[bytes] = []
        self.conflated = 0  # replaced since the last update frame
        self.since = 0.0  # perf_counter of the oldest pending forecast
        self._base = limit
        self._limit = limit

    def __len__(self) -> int:
        return len(self.control) + len(self.vals)

    def push(self, kind: str, body: bytes) -> None:
        self.control.append((kind, body))

    def push_snapshot(self, symbol: str) -> None:
        if symbol not in self.snapshots:
            self.snapshots.add(symbol)
            self.control.append(("snapshot", symbol))

    def add(self, symbol: str, value: bytes) -> None:
        if not self.vals:
            self.since = time.perf_counter()
        self.syms.append(symbol)
        self.vals.append(value)
        if len(self.vals) > self._limit:
            self._conflate()

    def extend(self, symbols: list[str], values: list[bytes]) -> None:
        if not self.vals:
            self.since = time.perf_counter()
        self.syms += symbols
        self.vals += values
        if len(self.vals) > self._limit:
            self._conflate()

    def _conflate(self) -> None:
        latest = dict(zip(self.syms, self.vals, strict=True))
        self.conflated += len(self.vals) - len(latest)
        self.syms, self.vals = list(latest), list(latest.values())
        # Amortised O(1) per add even when one client follows more symbols than the limit.
        self._limit = max(self._base, 2 * len(self.vals))

    def drop(self, symbols: set[str] | None) -> None:
        """Forget pending forecasts of `symbols` (None: all)."""
        if symbols is None:
            self.syms, self.vals = [], []
        elif self.vals:
            kept = [(s, v) for s, v in zip(self.syms, self.vals, strict=True) if s not in symbols]
            self.syms, self.vals = [s for s, _ in kept], [v for _, v in kept]

    def take(
        self, build: Callable[[str], bytes] = lambda s: b'"type":"snapshot"'
    ) -> tuple[list[bytes], list[str], int, int, float]:
        """Pending messages as frames with their seq: `(frames, kinds, forecasts, conflated,
        since)`. Control messages first, in order, building at most `SNAPSHOT_CHUNK`
        snapshots with `build(symbol)`; then, once no control message is left, the forecasts
        as one `update` frame. A symbol's pending forecasts are dropped when its snapshot is
        built (the snapshot holds them), so nothing older follows a snapshot."""
        frames, kinds = [], []
        built: set[str] = set()
        while self.control and len(built) < SNAPSHOT_CHUNK:
            kind, body = self.control.popleft()
            if kind == "snapshot":
                assert isinstance(body, str)
                self.snapshots.discard(body)
                built.add(body)
                body = build(body)
            assert isinstance(body, bytes)
            self.seq += 1
            frames.append(b'{"seq":%d,%b}' % (self.seq, body))
            kinds.append(kind)
        if built:
            self.drop(built)
        n, conflated = len(self.vals), self.conflated
        if n and not self.control:
            self.seq += 1
            extra = b',"conflated":%d' % conflated if conflated else b""
            frames.append(
                b'{"seq":%d,"type":"update","forecasts":[%b]%b}'
                % (self.seq, b",".join(self.vals), extra)
            )
            kinds.append("update")
            self.syms, self.vals, self.conflated = [], [], 0
            self._limit = self._base
        else:
            n = conflated = 0
        return frames, kinds, n, conflated, self.since


class Client:
    """One connection's subscriptions, outbox and rate limit."""

    def __init__(self, cid: int, limits: Limits, notify: Callable[[], None], now: float) -> None:
        self.id = cid
        self.outbox = Outbox(limits.queue)
        self.symbols: set[str] = set()
        self.wildcard = False
        self.notify = notify
        self.blocked_since: float | None = None  # set by the shell while a send waits
        self.dropped = 0  # messages ignored by the rate limit
        self.rate_error_at = -1e9
        self._rate = limits.rate
        self._burst = 2 * limits.rate
        self._tokens = self._burst
        self._last = now

    def allow(self, now: float) -> bool:
        """Token bucket: `rate` messages a second, bursts of 2x."""
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
