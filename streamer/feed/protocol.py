"""The websocket feed's protocol and per-client state, without sockets (docs/feed.md).

`FeedProtocol` subscribes to the hub. A published batch is appended to the `Outbox` of each client
subscribed to its symbols (references to the shared payload bytes, no copies, no encoding),
and the client's writer is woken through `notify`. The async shell (`streamer.feed.server`) runs
one writer task per connection that takes everything pending as frames (`FeedProtocol.take`) and
sends them, so no client ever waits for another. Client messages go through
`FeedProtocol.handle`, which answers by queueing replies on the same outbox.

Every frame gets the connection's next `seq` when it is taken, so the numbers a client sees
are consecutive in the order they were written to its socket.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from streamer.core.forecasts import POINT_FIELDS
from streamer.core.ticks import MAX_SYMBOL
from streamer.feed.hub import Hub
from streamer.metrics import Metrics
from streamer.settings import Settings

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
OPS = ("subscribe", "unsubscribe", "list", "resync", "ping")
ERROR_CODES = (
    "bad_json",
    "not_object",
    "unknown_op",
    "bad_request",
    "too_many_symbols",
    "wildcard_disabled",
    "rate_limited",
    "internal_error",
)


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


class FeedProtocol:
    """Subscriptions and messages of every connection (see the module docstring)."""

    def __init__(
        self,
        hub: Hub,
        limits: Limits,
        status: Callable[[], dict[str, Any]] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hub = hub
        self.limits = limits
        self.status = status or dict
        self._beat_stats: dict[str, Any] | None = None  # the heartbeat round's stats
        self.metrics = metrics
        self.clock = clock
        self.clients: dict[int, Client] = {}
        self._by_symbol: dict[str, set[Client]] = {}
        self._wild: set[Client] = set()
        self._n_subs = 0  # symbol subscriptions over all clients (the gauge)
        self._next_id = 0
        # Plain counters on the hot path; folded into Prometheus once a heartbeat.
        self.sent: dict[str, int] = {}
        self.deliveries = 0
        self.conflated = 0
        self.errors: dict[str, int] = {}
        self._flushed: dict[str, Any] = {"sent": {}, "deliveries": 0, "conflated": 0}
        self._unsubscribe_hub = hub.subscribe(self._on_publish)

    def close(self) -> None:
        self._unsubscribe_hub()

    # ------------------------------------------------------------------ connections
    def connect(self, notify: Callable[[], None]) -> Client:
        """A new connection: its client, with `hello` queued."""
        self._next_id += 1
        c = Client(self._next_id, self.limits, notify, self.clock())
        self.clients[c.id] = c
        hello = {
            "type": "hello",
            "version": PROTOCOL_VERSION,
            "heartbeat_interval": self.limits.heartbeat_s,
            "history": self.hub.history.n,
            "limits": self.limits.public(),
        }
        self._push(c, "hello", hello)
        self._gauges()
        notify()
        return c

    def disconnect(self, c: Client) -> None:
        self.clients.pop(c.id, None)
        self._unindex(c, set(c.symbols))
        self._wild.discard(c)
        self._gauges()

    def take(self, c: Client) -> tuple[list[bytes], float | None]:
        """Frames to send to `c` now, and the perf_counter time its oldest forecast in them
        was published (None: no update frame). Call again while `c.outbox` is not empty
        (snapshots are built a chunk at a time)."""
        frames, kinds, n, conflated, since = c.outbox.take(self.snapshot)
        for k in kinds:
            self.sent[k] = self.sent.get(k, 0) + 1
        if n:
            self.deliveries += n
            self.conflated += conflated
        return frames, since if n else None

    def sent_after(self, since: float) -> None:
        """An update frame holding forecasts published at `since` has been written."""
        if self.metrics is not None:
            self.metrics.feed_send.observe(time.perf_counter() - since)

    def heartbeat(self, part: int = 0, parts: int = 1) -> list[Client]:
        """Queue a heartbeat on the connections of slice `part` of `parts` (by client id;
        the server walks the slices over each heartbeat interval, so 1,000 clients do not
        get 1,000 frames in one burst); returns the clients to close as slow: a send
        blocked longer than `slow_close_s`, or more than `CONTROL_LIMIT` control messages
        waiting. The stats are computed once per round, at slice 0."""
        now = self.clock()
        if part == 0 or self._beat_stats is None:
            self._beat_stats = {**self.status(), "connections": len(self.clients)}
        body = _body("heartbeat", {"time": int(time.time() * 1000), "stats": self._beat_stats})
        slow = []
        for c in self.clients.values():
            if c.id % parts != part:
                continue
            since = c.blocked_since
            if (since is not None and now - since > self.limits.slow_close_s) or len(
                c.outbox.control
            ) > CONTROL_LIMIT:
                slow.append(c)
            elif c.blocked_since is None:  # a blocked client's heartbeat would only queue
                c.outbox.push("heartbeat", body)
                c.notify()
        self._flush_metrics()
        return slow

    # ------------------------------------------------------------------ fan-out
    def _on_publish(self, symbols: list[str], values: list[bytes]) -> None:
        touched: set[Client] = set()
        if self._by_symbol:
            index = self._by_symbol
            for s, v in zip(symbols, values, strict=True):
                subs = index.get(s)
                if subs:
                    for c in subs:
                        c.outbox.add(s, v)
                    touched |= subs
        for c in self._wild:
            c.outbox.extend(symbols, values)
            touched.add(c)
        for c in touched:
            c.notify()

    # ------------------------------------------------------------------ client messages
    def handle(self, c: Client, message: str | bytes) -> None:
        """Act on one client message; replies are queued on its outbox."""
        try:
            now = self.clock()
            if not c.allow(now):
                c.dropped += 1
                if now - c.rate_error_at >= 1.0:  # one reply a second, not one per message
                    c.rate_error_at = now
                    self._error(
                        c, None, "rate_limited",
                        f"more than {self.limits.rate:g} messages/s; {c.dropped} ignored so far",
                    )  # fmt: skip
                return
            if isinstance(message, bytes):
                self._error(c, None, "bad_json", "binary frames are not accepted; send JSON text")
                return
            try:
                msg = orjson.loads(message)
            except orjson.JSONDecodeError as e:
                self._error(c, None, "bad_json", f"not JSON: {e}")
                return
            if not isinstance(msg, dict):
                self._error(c, None, "not_object", "a message is a JSON object with an 'op'")
                return
            rid = msg.get("id")
            if not _scalar_id(rid):
                self._error(c, None, "bad_request", "'id' must be a string (≤ 256), number or null")
                return
            op = msg.get("op")
            if op not in OPS:
                self._error(c, rid, "unknown_op", f"unknown op {op!r}; ops: {', '.join(OPS)}")
                return
            getattr(self, "_op_" + op)(c, msg, rid)
        except Exception:  # a bug must cost this message, not the connection or the server
            log.exception("feed: failed to handle a client message")
            self._error(c, None, "internal_error", "the server failed to handle this message")
        finally:
            if len(c.outbox):
                c.notify()

    def _op_subscribe(self, c: Client, msg: dict[str, Any], rid: Any) -> None:
        symbols = self._symbols(c, msg, rid)
        if symbols is None:
            return
        if symbols == "*":
            if not self.limits.wildcard:
                self._error(c, rid, "wildcard_disabled", "subscribing to '*' is disabled")
                return
            self._unindex(c, set(c.symbols))
            c.symbols.clear()
            c.wildcard = True
            self._wild.add(c)
            self._ack(c, "subscribe", rid, "*")
            self._snapshots(c, sorted(self.hub.latest))
        else:
            new = [s for s in symbols if s not in c.symbols]
            if not c.wildcard and len(c.symbols) + len(new) > self.limits.max_symbols:
                self._error(
                    c, rid, "too_many_symbols",
                    f"{len(c.symbols)} subscribed + {len(new)} new > {self.limits.max_symbols}",
                )  # fmt: skip
                return
            if not c.wildcard:
                c.symbols.update(new)
                self._n_subs += len(new)
                for s in new:
                    self._by_symbol.setdefault(s, set()).add(c)
            self._ack(c, "subscribe", rid, symbols)
            self._snapshots(c, symbols)
        self._gauges()

    def _op_unsubscribe(self, c: Client, msg: dict[str, Any], rid: Any) -> None:
        symbols = self._symbols(c, msg, rid)
        if symbols is None:
            return
        if symbols == "*":
            self._wild.discard(c)
            c.wildcard = False
            self._unindex(c, set(c.symbols))
            c.symbols.clear()
            c.outbox.drop(None)
        else:
            gone = set(symbols) & c.symbols
            self._unindex(c, gone)
            c.symbols -= gone
            if not c.wildcard:
                c.outbox.drop(set(symbols))
        self._ack(c, "unsubscribe", rid, symbols)
        self._gauges()

    def _op_list(self, c: Client, msg: dict[str, Any], rid: Any) -> None:
        self._ack(c, "list", rid, sorted(self.hub.latest))

    def _op_resync(self, c: Client, msg: dict[str, Any], rid: Any) -> None:
        if c.wildcard:
            self._ack(c, "resync", rid, "*")
            self._snapshots(c, sorted(self.hub.latest))
        else:
            symbols = sorted(c.symbols)
            self._ack(c, "resync", rid, symbols)
            self._snapshots(c, symbols)

    def _op_ping(self, c: Client, msg: dict[str, Any], rid: Any) -> None:
        self._push(c, "pong", {"type": "pong", "id": rid, "time": int(time.time() * 1000)})

    # ------------------------------------------------------------------ helpers
    def _symbols(self, c: Client, msg: dict[str, Any], rid: Any) -> list[str] | str | None:
        """The request's `symbols` ("*" or a de-duplicated list), or None after an error."""
        symbols = msg.get("symbols")
        if symbols == "*":
            return "*"
        if not isinstance(symbols, list) or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_SYMBOL for s in symbols
        ):
            self._error(
                c, rid, "bad_request",
                f"'symbols' must be \"*\" or a list of 1..{MAX_SYMBOL} character strings",
            )  # fmt: skip
            return None
        return list(dict.fromkeys(symbols))

    def _snapshots(self, c: Client, symbols: Iterable[str]) -> None:
        """Queue a snapshot per symbol (built when taken, with the data of that moment)."""
        for s in symbols:
            c.outbox.push_snapshot(s)

    def snapshot(self, symbol: str) -> bytes:
        """The body of `symbol`'s snapshot message: latest forecast and history."""
        pts = self.hub.history.get(symbol)
        hist = {name: np.ascontiguousarray(pts[:, i]) for i, name in enumerate(POINT_FIELDS)}
        hist["ts"] = pts[:, 0].astype(np.int64)
        latest = self.hub.latest.get(symbol, b"null")
        return b'"type":"snapshot","symbol":%b,"forecast":%b,"history":%b' % (
            orjson.dumps(symbol),
            latest,
            orjson.dumps(hist, option=orjson.OPT_SERIALIZE_NUMPY),
        )

    def _ack(self, c: Client, op: str, rid: Any, symbols: list[str] | str) -> None:
        self._push(c, "ack", {"type": "ack", "op": op, "id": rid, "symbols": symbols})

    def _error(self, c: Client, rid: Any, code: str, message: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        if self.metrics is not None:
            self.metrics.feed_errors.labels(code).inc()
        self._push(c, "error", {"type": "error", "id": rid, "code": code, "message": message})

    def _push(self, c: Client, kind: str, message: dict[str, Any]) -> None:
        c.outbox.push(kind, _body(kind, message))

    def _unindex(self, c: Client, symbols: set[str]) -> None:
        """Remove `c` from the index of `symbols` (a subset of `c.symbols`)."""
        self._n_subs -= len(symbols)
        for s in symbols:
            subs = self._by_symbol.get(s)
            if subs is not None:
                subs.discard(c)
                if not subs:
                    del self._by_symbol[s]

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.feed_connections.set(len(self.clients))
            self.metrics.feed_subscriptions.set(self._n_subs + len(self._wild))

    def _flush_metrics(self) -> None:
        m, last = self.metrics, self._flushed
        if m is None:
            return
        for kind, n in self.sent.items():
            m.feed_messages_sent.labels(kind).inc(n - last["sent"].get(kind, 0))
        m.feed_deliveries.inc(self.deliveries - last["deliveries"])
        m.feed_conflated.inc(self.conflated - last["conflated"])
        self._flushed = {
            "sent": dict(self.sent),
            "deliveries": self.deliveries,
            "conflated": self.conflated,
        }


def _scalar_id(rid: Any) -> bool:
    if isinstance(rid, str):
        return len(rid) <= 256
    return rid is None or isinstance(rid, bool | int | float)


def _body(kind: str, message: dict[str, Any]) -> bytes:
    """A message as JSON without its braces, so `take` can put `seq` first."""
    if "type" not in message:
        message = {"type": kind, **message}
    return orjson.dumps(message)[1:-1]
