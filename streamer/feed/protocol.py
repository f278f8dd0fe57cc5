"""The websocket feed's protocol, without sockets (docs/feed.md).

`FeedProtocol` subscribes to the hub. A published batch is appended to the `Outbox` of each client
subscribed to its symbols (references to the shared payload bytes, no copies, no encoding),
and the client's writer is woken through `notify`. The async shell (`streamer.feed.server`) runs
one writer task per connection that takes everything pending as frames (`FeedProtocol.take`) and
sends them, so no client ever waits for another. Client messages go through
`FeedProtocol.handle`, which answers by queueing replies on the same outbox.

Every frame gets the connection's next `seq` when it is taken, so the numbers a client sees
are consecutive in the order they were written to its socket.

Per-client state (`Limits`, `Outbox`, `Client`) lives in `streamer.feed.outbox`. Pure and
synchronous: no asyncio, no sockets. May import `streamer.feed.hub`, `streamer.feed.outbox`,
`streamer.core.ticks` and `streamer.metrics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson

from streamer.core.forecasts import POINT_FIELDS
from streamer.core.ticks import MAX_SYMBOL
from streamer.feed.hub import Hub
from streamer.feed.outbox import CONTROL_LIMIT, Client, Limits
from streamer.metrics import Metrics

__all__ = ["ERROR_CODES", "OPS", "PROTOCOL_VERSION", "FeedProtocol"]

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
            "history": self.hub.points.n,  # wire name kept: clients read it
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
                self._error(
                    c,
                    rid,
                    "unknown_op",
                    f"unknown op {orjson.dumps(op).decode()[:40]}; ops: {', '.join(OPS)}",
                )
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
        """The body of `symbol`'s snapshot message: latest forecast and recent points (its
        `history` field)."""
        pts = self.hub.points.get(symbol)
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
