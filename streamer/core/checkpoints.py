"""Checkpoint planning (pure): which state records each micro-batch commits, and when.

The serving processor commits, in every micro-batch's transaction, the consumed offsets and,
when due, per-symbol state records and each partition's marker (`core.state_records`).
This module decides what goes in; it never touches Kafka, so its rules are tested alone
(`tests/streamer/core/test_checkpoints.py`):

* A partition never checkpointed yet (just assigned or restored) is checkpointed at once.
* Otherwise at most one partition per micro-batch, the one checkpointed longest ago, once
  `interval_s` has passed since, and only if it changed (applied ticks, or evicted states
  the topic lacks).
* A partition with more dirty symbols than `max_records` is written as a *round*: at most
  `max_records` records per micro-batch; its marker (the round's start) goes out with the
  last chunk, so a restore from it replays what each record lacks.
* While ticks are re-applied after a restore, the offset to commit never falls below
  `publish_from` (the group's committed offset): the group never moves back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from streamer.core.state_records import MARKER_KEY, encode_marker

__all__ = ["Checkpointer", "PartitionProgress", "Record", "StateSource"]

Record = tuple[bytes, bytes | None]  # (key, value); a None value is a tombstone


@dataclass
class PartitionProgress:
    """Where a ticks partition stands in this session."""

    next_offset: int  # first tick offset not applied yet
    publish_from: int  # ticks before this already have their forecasts published
    checkpointed: int = -1  # next_offset at the last marker written
    checkpoint_time: float = 0.0  # clock time of that marker (seconds, monotonic)
    round: list[str] | None = None  # symbols still to write in a checkpoint round
    round_start: int = -1  # next_offset when that round began: its marker
    reseeked: bool = False  # a seek back to next_offset is pending


class StateSource(Protocol):
    """What a checkpoint reads: `streamer.core.engine.Engine` is one."""

    version: str

    def dirty_symbols(self, partition: int) -> list[str]: ...

    def has_pending(self, partition: int) -> bool:
        """Whether states of `partition` off the device wait to be written (or deleted)."""
        ...

    def checkpoint(self, partitions: Iterable[int]) -> dict[int, list[Record]]: ...

    def checkpoint_symbols(self, symbols: Iterable[str]) -> dict[int, list[Record]]: ...

    def tombstones_of(self, partition: int) -> list[Record]: ...


class Checkpointer:
    """Plans each micro-batch's offsets and state records over `parts`.

    Args:
      parts: partition -> progress, shared with the processor (which adds partitions on
        assignment, drops them on revocation and advances `next_offset`).
      interval_s: seconds between two checkpoints of a partition.
      max_records: most state records one micro-batch writes (>= 1).
    """

    def __init__(
        self, parts: dict[int, PartitionProgress], interval_s: float, max_records: int
    ) -> None:
        self.parts = parts
        self.interval_s = interval_s
        self.max_records = max(1, max_records)

    def due(self, now: float) -> bool:
        """While idle: is a round open, or some partition behind its position and due?"""
        return any(st.round is not None for st in self.parts.values()) or any(
            st.checkpointed != st.next_offset and now - st.checkpoint_time >= self.interval_s
            for st in self.parts.values()
        )

    def plan(
        self,
        state: StateSource,
        now: float,
        *,
        advanced: dict[int, int] | None = None,
        force: bool = False,
        only: list[int] | None = None,
    ) -> tuple[dict[int, int], dict[int, list[Record]]]:
        """The offsets to commit and the state records to write with them.

        Args:
          state: the per-symbol state (records are taken now, so they match exactly the
            ticks applied so far).
          now: clock time (seconds, monotonic).
          advanced: partition -> next offset after this batch (partitions it touched).
          force: checkpoint every partition in scope whole (graceful stop, revocation).
          only: the partitions in scope (default: all).

        Returns:
          `({partition: offset to commit}, {partition: [(key, value or None), ...]})`; each
          partition's records end with its marker when a checkpoint of it completes.
        """
        advanced = advanced or {}
        parts = self.parts
        scope = only if only is not None else list(parts)
        full: list[int] = []  # partitions checkpointed whole in this batch
        if force:
            full = scope
        else:
            full = [p for p in scope if parts[p].checkpointed < 0]
            behind = [p for p in scope if parts[p].round is None
                      and (parts[p].checkpointed != parts[p].next_offset
                           or state.has_pending(p))]  # fmt: skip
            oldest = min(behind, key=lambda p: parts[p].checkpoint_time, default=None)
            if (
                oldest is not None
                and now - parts[oldest].checkpoint_time >= self.interval_s
                and oldest not in full
            ):
                dirty = state.dirty_symbols(oldest)
                if len(dirty) <= self.max_records:
                    full.append(oldest)
                else:  # a round: `max_records` a batch, the marker with the last chunk
                    st = parts[oldest]
                    st.round = dirty
                    st.round_start = advanced.get(oldest, st.next_offset)
        offsets = {p: max(o, parts[p].publish_from) for p, o in advanced.items()}
        records: dict[int, list[Record]] = {}
        if full:
            records = state.checkpoint(full)
            for p in full:
                nxt = advanced.get(p, parts[p].next_offset)
                records[p].append((MARKER_KEY, encode_marker(nxt, state.version)))
                self._marked(p, nxt, now)
        for p in scope:
            st = parts[p]
            if st.round is None or p in full:
                continue
            # Each record holds its symbol's state as of now, past the round's start; the
            # marker (the round's start) goes out once every symbol dirty then is written,
            # so a restore from it replays what each record lacks (`skip_applied` drops
            # the ticks a record already holds).
            chunk, st.round = st.round[: self.max_records], st.round[self.max_records :]
            got = state.checkpoint_symbols(chunk).get(p, [])
            if not st.round:
                got += state.tombstones_of(p)
                got.append((MARKER_KEY, encode_marker(st.round_start, state.version)))
                self._marked(p, st.round_start, now)
            records.setdefault(p, []).extend(got)
        return offsets, records

    def _marked(self, p: int, nxt: int, now: float) -> None:
        st = self.parts[p]
        st.checkpointed, st.checkpoint_time = nxt, now
        st.round, st.round_start = None, -1
