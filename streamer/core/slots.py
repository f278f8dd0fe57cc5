"""The host side of the engine's symbols (pure): which symbol holds which slot, and each
slot's rolling buffers and bookkeeping.

Arrays are indexed by slot (`[max_symbols]`, buffers `[max_symbols, buffer_len]`): prices,
epoch-ms times and volumes (NaN where unknown) of the last `buffer_len` ticks; `count` (ticks
since the state started), `seq` (ticks over the symbol's life here), `gen` (bumped when a
slot's state starts over), the last tick's time, partition and offset, when it was last seen,
its last forecast, and whether it changed since its last state record (`dirty`). The LSTM
state itself lives on the device (`model.runtime.Runtime`, owned by `Engine`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from streamer.core.swap import Snapshot

__all__ = ["SlotTable"]


class SlotTable:
    """Symbols → slots and the per-slot host arrays; `Engine` adds the model and the step.

    Args:
      max_symbols: slots; beyond it the least recently seen symbol is evicted.
      buffer_len: ticks kept per symbol.
      idle_evict_s: evict symbols unseen for this long (seconds of `clock`).
      clock: seconds, monotonic.
    """

    def __init__(
        self,
        max_symbols: int,
        buffer_len: int,
        idle_evict_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.max_symbols = max_symbols
        self.buffer_len = buffer_len
        self.idle_evict_s = idle_evict_s
        self.clock = clock
        s, r = max_symbols, buffer_len
        self.slot_of: dict[str, int] = {}
        self.symbol_at: list[str | None] = [None] * s
        self._free = list(range(s - 1, -1, -1))
        self.prices = np.zeros((s, r), np.float64)
        self.times = np.zeros((s, r), np.int64)
        self.volumes = np.full((s, r), np.nan, np.float64)
        self.count = np.zeros(s, np.int64)  # ticks applied since the state started
        self.seq = np.zeros(s, np.int64)  # ticks applied over the symbol's life here
        self.gen = np.zeros(s, np.int64)  # bumped when a slot's state starts over
        self.last_ts = np.zeros(s, np.int64)
        self.partition = np.full(s, -1, np.int32)
        self.offset = np.full(s, -1, np.int64)
        self.last_seen = np.zeros(s, np.float64)
        self.last_forecast = np.full(s, np.nan, np.float64)
        self.dirty = np.zeros(s, bool)
        self.tombstones: dict[int, set[str]] = {}
        self._last_sweep = clock()

    def _reset_states(self, slots: list[int]) -> None:
        """Zero these slots' device state (the engine's runtime)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- symbol table
    def __len__(self) -> int:
        return len(self.slot_of)

    def symbols(self, partitions: Iterable[int] | None = None) -> list[str]:
        if partitions is None:
            return list(self.slot_of)
        ps = set(partitions)
        return [sym for sym, s in self.slot_of.items() if int(self.partition[s]) in ps]

    def _allocate(self, symbol: str, evicted: list[str]) -> int:
        if not self._free:
            used = np.fromiter(self.slot_of.values(), np.int64, len(self.slot_of))
            oldest = int(used[np.argmin(self.last_seen[used])])
            evicted.append(self._release(oldest, tombstone=True))
        slot = self._free.pop()
        self.slot_of[symbol] = slot
        self.symbol_at[slot] = symbol
        self.count[slot] = 0
        self.seq[slot] = 0
        self.gen[slot] += 1  # a new life in this slot: a pending swap must re-warm it
        self.partition[slot] = -1
        self.last_forecast[slot] = np.nan
        return slot

    def _release(self, slot: int, *, tombstone: bool) -> str:
        symbol = self.symbol_at[slot]
        assert symbol is not None
        if tombstone:  # forget its checkpoint too, or a restore would revive stale state
            self.tombstones.setdefault(int(self.partition[slot]), set()).add(symbol)
        del self.slot_of[symbol]
        self.symbol_at[slot] = None
        self.dirty[slot] = False
        self._free.append(slot)
        return symbol

    def evict_idle(self) -> list[str]:
        """Evict symbols idle longer than `idle_evict_s` (their state is zeroed)."""
        now = self.clock()
        self._last_sweep = now
        idle = [s for s in self.slot_of.values() if now - self.last_seen[s] > self.idle_evict_s]
        out = [self._release(s, tombstone=True) for s in idle]
        if idle:
            self._reset_states(idle)
        return out

    def drop_partitions(self, partitions: Iterable[int]) -> list[str]:
        """Forget every symbol of these partitions (they moved to another instance)."""
        ps = set(partitions)
        slots = [s for s in self.slot_of.values() if int(self.partition[s]) in ps]
        out = [self._release(s, tombstone=False) for s in slots]
        for p in ps:
            self.tombstones.pop(p, None)
        if slots:
            self._reset_states(slots)
        return out

    def dirty_symbols(self, partition: int) -> list[str]:
        """The symbols of `partition` with ticks applied since their last state record."""
        return [sym for sym, s in self.slot_of.items()
                if self.dirty[s] and self.partition[s] == partition]  # fmt: skip

    def tombstones_of(self, partition: int) -> list[tuple[bytes, bytes | None]]:
        """Delete records for the symbols evicted from `partition` (and not back since)."""
        return [(sym.encode(), None) for sym in self.tombstones.pop(partition, set())
                if sym not in self.slot_of]  # fmt: skip

    # ----------------------------------------------------------------- model swap
    def snapshot(self) -> Snapshot:
        """Copies of every held symbol's buffers and tick count (the input of a swap's
        background rounds, taken between micro-batches)."""
        slots = np.fromiter(self.slot_of.values(), np.int64, len(self.slot_of))
        return Snapshot(
            slots, [self.symbol_at[s] or "" for s in slots.tolist()], self.seq[slots].copy(),
            self.prices[slots], self.times[slots], self.volumes[slots], self.gen[slots].copy(),
        )  # fmt: skip

    def _live(self) -> Snapshot:
        """The held symbols' buffers as they are now (no copies: for the final round)."""
        slots = np.fromiter(self.slot_of.values(), np.int64, len(self.slot_of))
        return Snapshot(
            slots, [self.symbol_at[s] or "" for s in slots.tolist()], self.seq[slots],
            self.prices[slots], self.times[slots], self.volumes[slots], self.gen[slots],
        )  # fmt: skip
