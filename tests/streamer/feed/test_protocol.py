"""The feed's protocol and per-client state, without sockets (streamer/feed/protocol.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from streamer.feed.hub import Hub, SnapshotPoints
from streamer.feed.outbox import Limits, Outbox
from streamer.feed.protocol import ERROR_CODES, FeedProtocol


def forecast(sym: str, seq: int) -> bytes:
    return orjson.dumps({"symbol": sym, "seq": seq, "price": float(seq)})


def publish(hub: Hub, items: list[tuple[str, int]]) -> None:
    syms = [s for s, _ in items]
    pts = np.array([[q, q, q + 0.5, q - 1, q + 1] for _, q in items], np.float64).reshape(-1, 5)
    hub.publish(syms, [forecast(s, q) for s, q in items], pts)


class Conn:
    """A fake connection: takes frames the way the server's writer does."""

    def __init__(self, feed: FeedProtocol) -> None:
        self.feed = feed
        self.woken = 0
        self.client = feed.connect(self.wake)
        self.seq = 0

    def wake(self) -> None:
        self.woken += 1

    def send(self, msg: Any) -> None:
        text = msg if isinstance(msg, str | bytes) else orjson.dumps(msg).decode()
        self.feed.handle(self.client, text)

    def recv(self) -> list[dict[str, Any]]:
        frames, _ = self.feed.take(self.client)
        while self.client.outbox.control:  # as the writer does: snapshots come in chunks
            frames += self.feed.take(self.client)[0]
        out = [orjson.loads(f) for f in frames]
        for m in out:
            assert m["seq"] == self.seq + 1
            self.seq = m["seq"]
        return out


@pytest.fixture
def hub() -> Hub:
    return Hub(snapshot_points=4)


@pytest.fixture
def feed(hub: Hub) -> FeedProtocol:
    t = [0.0]
    f = FeedProtocol(hub, Limits(max_symbols=3, rate=5, queue=4), status=lambda: {"model": "m"},
             clock=lambda: t[0])  # fmt: skip
    f.now = t  # type: ignore[attr-defined]
    return f


def test_snapshot_points_keep_the_last_n_in_order() -> None:
    h = SnapshotPoints(n=3, capacity=1)
    h.add(["A", "B", "A"], np.array([[1.0] * 5, [10.0] * 5, [2.0] * 5]))
    h.add(["A"] * 5 + ["C"], np.array([[k] * 5 for k in (3.0, 4.0, 5.0, 6.0, 7.0, 30.0)]))
    assert h.get("A")[:, 0].tolist() == [5.0, 6.0, 7.0]
    assert h.get("B")[:, 0].tolist() == [10.0]
    assert h.get("C")[:, 1].tolist() == [30.0]
    assert h.get("Z").shape == (0, 5)
    h.drop(["A"])
    h.add(["D"], np.array([[9.0] * 5]))  # reuses A's row, from empty
    assert h.get("D")[:, 0].tolist() == [9.0] and h.get("A").shape == (0, 5)


def test_outbox_merges_forecasts_and_conflates_beyond_its_limit() -> None:
    box = Outbox(limit=3)
    box.push("ack", b'"type":"ack"')
    for sym, v in [("A", b"1"), ("B", b"2"), ("A", b"3")]:
        box.add(sym, v)
    frames, kinds, n, conflated, _ = box.take()
    assert kinds == ["ack", "update"] and n == 3 and conflated == 0
    assert orjson.loads(frames[1]) == {"seq": 2, "type": "update", "forecasts": [1, 2, 3]}
    box.extend(["A", "B", "A", "A", "C"], [b"4", b"5", b"6", b"7", b"8"])  # 5 > 3: conflate
    frames, _, n, conflated, _ = box.take()
    msg = orjson.loads(frames[0])
    assert msg["forecasts"] == [7, 5, 8] and msg["conflated"] == 2 and msg["seq"] == 3


def test_hello_subscribe_snapshot_then_updates(hub: Hub, feed: FeedProtocol) -> None:
    publish(hub, [("A", 1), ("A", 2), ("B", 1)])
    c = Conn(feed)
    assert c.woken == 1  # the writer sends the hello at once
    (hello,) = c.recv()
    assert hello["type"] == "hello" and hello["version"] == 1 and hello["history"] == 4
    c.send({"op": "subscribe", "id": 7, "symbols": ["A", "NEW"]})
    ack, snap_a, snap_new = c.recv()
    assert ack == {"seq": 2, "type": "ack", "op": "subscribe", "id": 7, "symbols": ["A", "NEW"]}
    assert snap_a["symbol"] == "A" and snap_a["forecast"]["seq"] == 2
    assert snap_a["history"]["ts"] == [1, 2] and snap_a["history"]["forecast"] == [1.5, 2.5]
    assert snap_new["forecast"] is None and snap_new["history"]["price"] == []
    publish(hub, [("A", 3), ("B", 2), ("NEW", 1), ("A", 4)])
    (upd,) = c.recv()
    assert [f["seq"] for f in upd["forecasts"]] == [3, 1, 4]
    assert [f["symbol"] for f in upd["forecasts"]] == ["A", "NEW", "A"]
    assert c.woken >= 1


def test_wildcard_unsubscribe_resync_list_ping(hub: Hub, feed: FeedProtocol) -> None:
    publish(hub, [("A", 1), ("B", 1)])
    c = Conn(feed)
    c.recv()
    c.send({"op": "subscribe", "symbols": "*"})
    assert [m["type"] for m in c.recv()] == ["ack", "snapshot", "snapshot"]
    publish(hub, [("C", 1)])  # a symbol that appears later
    assert c.recv()[0]["forecasts"][0]["symbol"] == "C"
    c.send({"op": "list", "id": "l"})
    assert c.recv()[0]["symbols"] == ["A", "B", "C"]
    publish(hub, [("A", 2)])
    c.send({"op": "resync", "id": 1})
    msgs = c.recv()  # the pending update of A is folded into the fresh snapshot
    assert [m["type"] for m in msgs] == ["ack", "snapshot", "snapshot", "snapshot"]
    assert msgs[1]["forecast"]["seq"] == 2
    c.send({"op": "unsubscribe", "symbols": "*"})
    publish(hub, [("A", 3)])
    assert [m["type"] for m in c.recv()] == ["ack"]
    c.send({"op": "ping", "id": 99})
    (pong,) = c.recv()
    assert pong["type"] == "pong" and pong["id"] == 99


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{nope", "bad_json"),
        (b'{"op": "ping"}', "bad_json"),
        ("[1, 2]", "not_object"),
        ('{"op": "subscribe2", "id": 3}', "unknown_op"),
        ('{"id": 3}', "unknown_op"),
        ('{"op": "subscribe", "id": 3, "symbols": "A"}', "bad_request"),
        ('{"op": "subscribe", "id": 3, "symbols": [1]}', "bad_request"),
        ('{"op": "subscribe", "id": 3, "symbols": [""]}', "bad_request"),
        ('{"op": "subscribe", "id": 3, "symbols": ["' + "x" * 65 + '"]}', "bad_request"),
        ('{"op": "subscribe", "id": 3, "symbols": ["A", "B", "C", "D"]}', "too_many_symbols"),
    ],
)
def test_errors_are_replies_with_a_code(
    feed: FeedProtocol, message: str | bytes, code: str
) -> None:
    c = Conn(feed)
    c.recv()
    c.send(message)
    (err,) = c.recv()
    assert err["type"] == "error" and err["code"] == code and err["message"]
    assert code in ERROR_CODES
    if code != "bad_json" and code != "not_object":
        assert err["id"] == 3
    assert c.client.symbols == set()  # nothing half-applied


def test_symbol_limit_counts_what_is_held(feed: FeedProtocol) -> None:
    c = Conn(feed)
    c.recv()
    c.send({"op": "subscribe", "symbols": ["A", "B"]})
    c.send({"op": "subscribe", "symbols": ["B", "C"]})  # 3: at the limit
    c.send({"op": "subscribe", "id": 5, "symbols": ["D"]})
    assert c.recv()[-1]["code"] == "too_many_symbols"
    c.send({"op": "unsubscribe", "symbols": ["A"]})
    c.send({"op": "subscribe", "symbols": ["D"]})
    assert c.client.symbols == {"B", "C", "D"}


def test_wildcard_can_be_disabled(hub: Hub) -> None:
    c = Conn(FeedProtocol(hub, Limits(wildcard=False)))
    c.recv()
    c.send({"op": "subscribe", "symbols": "*"})
    assert c.recv()[0]["code"] == "wildcard_disabled"


def test_rate_limit_refills_and_replies_once_a_second(feed: FeedProtocol) -> None:
    c = Conn(feed)
    c.recv()
    for _ in range(30):  # burst of 2 x 5, then 20 over the limit
        c.send({"op": "ping"})
    msgs = c.recv()
    assert [m["type"] for m in msgs].count("pong") == 10
    (err,) = [m for m in msgs if m["type"] == "error"]  # one reply, not twenty
    assert err["code"] == "rate_limited" and "1 ignored" in err["message"]
    assert c.client.dropped == 20
    feed.now[0] += 1.0  # type: ignore[attr-defined]
    for _ in range(5):
        c.send({"op": "ping"})
    assert all(m["type"] == "pong" for m in c.recv())


def test_ids_must_be_scalars(feed: FeedProtocol) -> None:
    c = Conn(feed)
    c.recv()
    deep = "[" * 300 + "]" * 300  # parses, but could not be echoed back
    c.send('{"op": "ping", "id": ' + deep + "}")
    c.send({"op": "ping", "id": {"a": 1}})
    c.send({"op": "ping", "id": "x" * 257})
    msgs = c.recv()
    got = [(m["type"], m.get("code"), m["id"]) for m in msgs]
    assert got == [("error", "bad_request", None)] * 3
    for rid in ("ok", 7, 1.5, None, True):
        c.send({"op": "ping", "id": rid})
        (pong,) = c.recv()
        assert pong["type"] == "pong" and pong["id"] == rid


def test_resync_spam_queues_one_snapshot_per_symbol(hub: Hub, feed: FeedProtocol) -> None:
    """Snapshots are built when taken: a client that resyncs without reading queues no
    more than one per symbol, and what it finally gets is current."""
    publish(hub, [("A", 1), ("B", 1)])
    c = Conn(feed)
    c.recv()
    c.send({"op": "subscribe", "symbols": ["A", "B"]})
    for _ in range(8):
        c.send({"op": "resync"})
    assert len(c.client.outbox.snapshots) == 2
    assert sum(1 for k, _ in c.client.outbox.control if k == "snapshot") == 2
    publish(hub, [("A", 2)])  # after the resyncs, before the client reads
    msgs = c.recv()
    snaps = [m for m in msgs if m["type"] == "snapshot"]
    assert [(m["symbol"], m["forecast"]["seq"]) for m in snaps] == [("A", 2), ("B", 1)]
    assert not [m for m in msgs if m["type"] == "update"]  # A's update is in its snapshot


def test_wildcard_snapshots_come_in_chunks(hub: Hub) -> None:
    from streamer.feed.outbox import SNAPSHOT_CHUNK

    feed = FeedProtocol(hub, Limits())
    n = 2 * SNAPSHOT_CHUNK + 5
    publish(hub, [(f"S{i:03d}", 1) for i in range(n)])
    c = Conn(feed)
    c.recv()
    c.send({"op": "subscribe", "symbols": "*"})
    first, _ = feed.take(c.client)
    assert len(first) == 1 + SNAPSHOT_CHUNK  # the ack and one chunk
    publish(hub, [("S000", 2), ("NEW", 1)])
    rest = [orjson.loads(f) for f in first]
    while c.client.outbox.control:
        rest += [orjson.loads(f) for f in feed.take(c.client)[0]]
    rest += [orjson.loads(f) for f in feed.take(c.client)[0]]
    kinds = [m["type"] for m in rest]
    assert kinds.count("snapshot") == n and kinds[-1] == "update"
    # S000's snapshot went out before its new forecast: the update still carries it.
    assert [f["symbol"] for f in rest[-1]["forecasts"]] == ["S000", "NEW"]


def test_unsubscribe_drops_pending_and_disconnect_unindexes(hub: Hub, feed: FeedProtocol) -> None:
    a, b = Conn(feed), Conn(feed)
    for c in (a, b):
        c.recv()
        c.send({"op": "subscribe", "symbols": ["A"]})
        c.recv()
    publish(hub, [("A", 1)])
    a.send({"op": "unsubscribe", "symbols": ["A"]})
    assert [m["type"] for m in a.recv()] == ["ack"]
    feed.disconnect(b.client)
    publish(hub, [("A", 2)])
    assert a.recv() == [] and feed._by_symbol == {}


def test_heartbeat_carries_stats_and_flags_blocked_clients(feed: FeedProtocol) -> None:
    a, b = Conn(feed), Conn(feed)
    a.recv()
    b.recv()
    b.client.blocked_since = feed.clock()
    assert feed.heartbeat() == []
    (hb,) = a.recv()
    assert hb["type"] == "heartbeat" and hb["stats"] == {"model": "m", "connections": 2}
    assert b.recv() == []  # a blocked client's heartbeats are not queued
    feed.now[0] += 10  # type: ignore[attr-defined]
    assert feed.heartbeat() == [b.client]


def test_heartbeat_slices_cover_every_client_once_per_round(feed: FeedProtocol) -> None:
    conns = [Conn(feed) for _ in range(7)]
    for c in conns:
        c.recv()
    got = []
    for part in range(3):
        assert feed.heartbeat(part, 3) == []
        got.append([i for i, c in enumerate(conns) if c.recv()])
    assert sorted(i for g in got for i in g) == list(range(7))  # each exactly once
    assert all(len(g) < 7 for g in got)  # and never all in one burst
