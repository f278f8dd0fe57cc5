"""Checkpoint planning without Kafka (streamer/core/checkpoints.py): what each micro-batch
commits, over a small fake state source."""

from __future__ import annotations

from collections.abc import Iterable

from streamer.core.checkpoints import Checkpointer, PartitionProgress, Record
from streamer.core.state_records import MARKER_KEY, decode_marker


class FakeState:
    """Symbols by partition with a dirty flag each; records are `(symbol, b"state")`."""

    version = "v1"

    def __init__(self, symbols: dict[int, list[str]]) -> None:
        self.part_of = {s: p for p, syms in symbols.items() for s in syms}
        self.dirty = set(self.part_of)
        self.tombstones: dict[int, set[str]] = {}

    def dirty_symbols(self, partition: int) -> list[str]:
        return sorted(s for s in self.dirty if self.part_of[s] == partition)

    def checkpoint(self, partitions: Iterable[int]) -> dict[int, list[Record]]:
        ps = set(partitions)
        out: dict[int, list[Record]] = {p: [] for p in ps}
        for p in ps:
            out[p] += self.checkpoint_symbols(self.dirty_symbols(p)).get(p, [])
            out[p] += self.tombstones_of(p)
        return out

    def checkpoint_symbols(self, symbols: Iterable[str]) -> dict[int, list[Record]]:
        out: dict[int, list[Record]] = {}
        for s in symbols:
            if s in self.dirty:
                out.setdefault(self.part_of[s], []).append((s.encode(), b"state"))
                self.dirty.discard(s)
        return out

    def has_pending(self, partition: int) -> bool:
        return partition in self.tombstones

    def tombstones_of(self, partition: int) -> list[Record]:
        return [(s.encode(), None) for s in sorted(self.tombstones.pop(partition, set()))]


def markers(records: list[Record]) -> list[int]:
    return [decode_marker(v) for k, v in records if k == MARKER_KEY and v is not None]


def keys(records: list[Record]) -> list[bytes]:
    return [k for k, _ in records if k != MARKER_KEY]


def planner(parts: dict[int, PartitionProgress], max_records: int = 100) -> Checkpointer:
    return Checkpointer(parts, interval_s=5.0, max_records=max_records)


def test_a_new_partition_is_checkpointed_at_once_with_its_marker() -> None:
    parts = {0: PartitionProgress(next_offset=10, publish_from=10)}
    state = FakeState({0: ["A", "B"]})
    offsets, records = planner(parts).plan(state, now=100.0, advanced={0: 12})
    assert offsets == {0: 12}
    assert keys(records[0]) == [b"A", b"B"]
    assert markers(records[0]) == [12] and records[0][-1][0] == MARKER_KEY  # marker last
    assert (parts[0].checkpointed, parts[0].checkpoint_time) == (12, 100.0)


def test_one_partition_per_batch_the_oldest_and_only_once_due() -> None:
    parts = {
        0: PartitionProgress(10, 10, checkpointed=10, checkpoint_time=100.0),
        1: PartitionProgress(20, 20, checkpointed=20, checkpoint_time=98.0),
    }
    state = FakeState({0: ["A"], 1: ["B"]})
    cp = planner(parts)
    parts[0].next_offset, parts[1].next_offset = 11, 21  # both applied ticks since
    assert not cp.due(now=102.0)
    assert cp.plan(state, now=102.0, advanced={0: 11, 1: 21})[1] == {}  # not due yet
    assert cp.due(now=103.5)
    _, records = cp.plan(state, now=103.5, advanced={0: 11, 1: 21})
    assert list(records) == [1]  # checkpointed longest ago (98.0 < 100.0), alone
    assert markers(records[1]) == [21]
    _, records = cp.plan(state, now=105.5, advanced={0: 11})
    assert list(records) == [0] and markers(records[0]) == [11]
    assert not cp.due(now=200.0)  # nothing applied since either marker


def test_an_unchanged_partition_is_not_checkpointed_but_an_eviction_counts() -> None:
    parts = {0: PartitionProgress(10, 10, checkpointed=10, checkpoint_time=0.0)}
    state = FakeState({0: ["A"]})
    assert planner(parts).plan(state, now=100.0)[1] == {}
    state.tombstones[0] = {"GONE"}
    _, records = planner(parts).plan(state, now=100.0)
    assert (b"GONE", None) in records[0] and markers(records[0]) == [10]


def test_a_large_partition_is_written_as_a_round_marker_with_the_last_chunk() -> None:
    parts = {0: PartitionProgress(50, 50, checkpointed=40, checkpoint_time=0.0)}
    state = FakeState({0: [f"S{i}" for i in range(7)]})
    state.tombstones[0] = {"GONE"}
    cp = planner(parts, max_records=3)
    written: list[bytes] = []
    _, r1 = cp.plan(state, now=10.0, advanced={0: 52})  # the round starts at 52
    assert markers(r1[0]) == [] and len(keys(r1[0])) == 3
    written += keys(r1[0])
    assert cp.due(now=10.0)  # an open round is always due
    parts[0].next_offset = 52
    _, r2 = cp.plan(state, now=10.1, advanced={0: 55})
    assert markers(r2[0]) == [] and len(keys(r2[0])) == 3
    written += keys(r2[0])
    parts[0].next_offset = 55
    _, r3 = cp.plan(state, now=10.2, advanced={0: 56})
    written += keys(r3[0])
    # The marker is the round's start (52), not the offset of the batch that ended it:
    # records hold state past 52, and a restore replays from 52 skipping what they hold.
    assert markers(r3[0]) == [52] and (b"GONE", None) in r3[0]
    assert sorted(k for k in written if k != b"GONE") == sorted(f"S{i}".encode() for i in range(7))
    assert (parts[0].checkpointed, parts[0].round) == (52, None)


def test_offsets_never_move_the_group_back_while_replaying() -> None:
    parts = {0: PartitionProgress(next_offset=5, publish_from=30, checkpointed=5)}
    offsets, _ = planner(parts).plan(FakeState({0: []}), now=0.0, advanced={0: 9})
    assert offsets == {0: 30}


def test_force_checkpoints_every_partition_in_scope() -> None:
    parts = {p: PartitionProgress(10, 10, checkpointed=9, checkpoint_time=99.0) for p in (0, 1)}
    state = FakeState({0: ["A"], 1: ["B"]})
    _, records = planner(parts).plan(state, now=100.0, force=True, only=[1])
    assert list(records) == [1] and markers(records[1]) == [10]
    _, records = planner(parts).plan(state, now=100.0, force=True)
    assert sorted(records) == [0, 1]
