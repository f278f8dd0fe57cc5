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
    """Symbols → slots and the per-slot host arrays; `core.persistence.SlotStates` adds
    where states go off the device and come back from, `Engine` the model and the step.

    Args:
      max_symbols: device slots; beyond it the least recently seen symbol's state moves to
        the host cache.
      buffer_len: ticks kept per symbol.
      idle_evict_s: move symbols unseen for this long (seconds of `clock`) off the device.
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
        self._last_sweep = clock()

    # ----------------------------------------------------------------- symbol table
    def __len__(self) -> int:
        return len(self.slot_of)

    def symbols(self, partitions: Iterable[int] | None = None) -> list[str]:
        if partitions is None:
            return list(self.slot_of)
        ps = set(partitions)
        return [sym for sym, s in self.slot_of.items() if int(self.partition[s]) in ps]

    def _allocate(self, symbol: str) -> int:
        """A free slot for `symbol` (the caller made sure there is one)."""
        slot = self._free.pop()
        self.slot_of[symbol] = slot
        self.symbol_at[slot] = symbol
        # Every per-slot field starts over: a field left from the slot's previous symbol
        # leaks into the new one (a stale `offset` made `skip_applied` drop its ticks).
        self.count[slot] = 0
        self.seq[slot] = 0
        self.gen[slot] += 1  # a new life in this slot: a pending swap must re-warm it
        self.partition[slot] = -1
        self.offset[slot] = -1
        self.last_ts[slot] = 0
        self.dirty[slot] = False
        self.last_forecast[slot] = np.nan
        return slot

    def _release(self, slot: int) -> str:
        """Free `slot` (its symbol's state is wherever the caller put it)."""
        symbol = self.symbol_at[slot]
        assert symbol is not None
        del self.slot_of[symbol]
        self.symbol_at[slot] = None
        self.dirty[slot] = False
        self._free.append(slot)
        return symbol

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
