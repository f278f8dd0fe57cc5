"""The host-side state cache alone: bounded, never the only holder of a state it drops."""

from __future__ import annotations

import orjson
import pytest

from streamer.core.state_records import record_info
from streamer.core.statecache import StateCache


def record(symbol: str, seq: int, *, partition: int = 0, model: str = "m", ts: int = 0) -> bytes:
    header = orjson.dumps({"symbol": symbol, "partition": partition, "seq": seq,
                           "model": model, "last_ts": ts})  # fmt: skip
    return len(header).to_bytes(4, "little") + header + bytes(16)


def test_record_info_reads_the_header_and_refuses_other_bytes() -> None:
    info = record_info(record("A", 3, partition=2, model="v", ts=9))
    assert (info.symbol, info.partition, info.seq, info.model, info.last_ts) == ("A", 2, 3, "v", 9)
    for bad in (b"", b"\x05\x00\x00\x00{oops", record("A", 1)[:6]):
        with pytest.raises(ValueError):
            record_info(bad)
    with pytest.raises(ValueError):
        StateCache(-1)


def test_trim_drops_only_states_the_topic_holds() -> None:
    c = StateCache(1)
    a, b = record("A", 5), record("B", 7)
    c.put("A", 0, a, dirty=True)
    c.put("B", 0, b, dirty=False)  # clean, but no committed record known: not confirmed
    assert c.trim() == 0 and len(c) == 2
    assert c.pending(0) == ["A", "B"] and c.has_pending(0) and not c.has_pending(1)
    assert c.sending("A") is a and c.pending(0) == ["B"]  # in a checkpoint now
    c.committed(40, a)
    assert c.trim() == 1 and list(c.held) == ["B"]  # A's record is in the topic at 40
    assert c.outside == {"A"} and c.wanted(["A", "B", "C"]) == [("A", 0, 40)]
    with pytest.raises(LookupError):
        c.take("A")  # fetch it first
    assert c.fill(a, 40) == "A" and not c.outside and c.take("A") is a
    assert c.take("C") is None


def test_a_committed_older_state_does_not_confirm_a_newer_one() -> None:
    c = StateCache(0)
    old, new = record("A", 5), record("A", 6)
    c.committed(10, old)  # the topic's latest record of A holds seq 5
    c.put("A", 0, new, dirty=False)  # its slot was clean at seq 6: the seq-6 record is in flight
    assert c.trim() == 0 and c.is_pending("A")
    c.put("A", 0, old, dirty=False)  # the same state the topic holds: confirmed at once
    assert not c.is_pending("A") and c.trim() == 1 and c.wanted(["A"]) == [("A", 0, 10)]


def test_expired_and_dropped_partitions_are_forgotten() -> None:
    c = StateCache(10)
    c.put("A", 0, record("A", 1, ts=1_000), dirty=True)
    c.index(record("B", 1, ts=2_000), 3)
    c.put("C", 1, record("C", 1, partition=1, ts=0), dirty=True)
    c.put("D", 0, record("D", 1, ts=0), dirty=True)
    assert c.expired(0, now_ts=10_000, max_age_ms=8_500, skip={"D"}) == ["A"]
    assert "A" not in c and "B" in c and "D" in c and c.pending(0) == ["D"]
    assert c.expired(0, now_ts=20_000, max_age_ms=8_500, skip=()) == ["B", "D"]
    c.drop_partitions([1])
    assert len(c) == 0 and c.stored == {} and not c.has_pending(1)
