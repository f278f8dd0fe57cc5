"""Where a symbol's state goes when it leaves a device slot, and how it comes back (pure).

Eviction frees a device slot, never a symbol's state: an evicted (least recently seen, or
idle) symbol's state record goes to the host cache (`core.statecache.StateCache`, which the
state topic backs), and the symbol's next tick takes it back into a slot, so it continues
where it stopped (same `seq`, same state, no warming). Only a state whose last tick is more
than `state_max_age_s` (tick time) before the symbol's next tick starts afresh, wherever it
is held; one made by another model version is re-warmed from its buffer.

`SlotStates` is the middle layer of the engine: `core.slots.SlotTable` below (the host
table), `core.engine.Engine` above (the model and the step). It also writes the states out:
checkpoints of the dirty slots and of the cache's unwritten records, tombstones of the
states too old to keep, and a partition's restore from the state topic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from streamer.core.slots import SlotTable
from streamer.core.state_records import StateRecord, decode_state, encode_states, record_info
from streamer.core.statecache import StateCache
from streamer.core.swap import buffer_features
from streamer.core.ticks import Decoded

if TYPE_CHECKING:
    from model.config import ModelConfig
    from model.features import FeatureStats
    from model.runtime import Runtime

__all__ = ["STATE_MAX_AGE_S", "SlotStates"]

log = logging.getLogger(__name__)

STATE_MAX_AGE_S = 30 * 86400.0  # default: a state older than this (in tick time) starts afresh
Records = dict[int, list[tuple[bytes, bytes | None]]]  # partition -> [(key, value or None)]


class SlotStates(SlotTable):
    """The slot table plus the states off the device: spill, take back, checkpoint, restore.

    Args:
      max_symbols, buffer_len, idle_evict_s, clock: as `SlotTable`.
      cache: where evicted states wait (default: one holding `max_symbols` records).
      state_max_age_s: a symbol whose tick comes more than this after its state's last
        tick (tick timestamps) starts afresh.
    """

    # Set by `Engine` (the model serving now).
    runtime: Runtime
    version: str
    config: ModelConfig
    stats: FeatureStats
    window: int

    def __init__(
        self,
        max_symbols: int,
        buffer_len: int,
        idle_evict_s: float,
        clock: Callable[[], float],
        cache: StateCache | None = None,
        state_max_age_s: float = STATE_MAX_AGE_S,
    ) -> None:
        super().__init__(max_symbols, buffer_len, idle_evict_s, clock)
        self.cache = cache if cache is not None else StateCache(max_symbols)
        self.max_age_ms = int(state_max_age_s * 1000)
        self.stream_ts: dict[int, int] = {}  # partition -> newest tick time applied (ms)

    # ----------------------------------------------------------------- leaving
    def _spill(self, slots: list[int]) -> list[str]:
        """Move these slots' symbols off the device: each one's state record (dirty or not)
        into the host cache, then free the slot."""
        if not slots:
            return []
        for s, rec in zip(slots, self._encode(slots), strict=True):
            sym = self.symbol_at[s]
            assert sym is not None
            self.cache.put(sym, int(self.partition[s]), rec, dirty=bool(self.dirty[s]))
        return [self._release(s) for s in slots]

    def evict_idle(self) -> list[str]:
        """Move symbols idle longer than `idle_evict_s` off the device (their state waits
        in the host cache)."""
        now = self.clock()
        self._last_sweep = now
        idle = [s for s in self.slot_of.values() if now - self.last_seen[s] > self.idle_evict_s]
        return self._spill(idle)

    def _evict_lru(self, n: int, keep: set[int]) -> list[str]:
        """Move the `n` least recently seen symbols not in slots `keep` off the device."""
        cand = np.fromiter((s for s in self.slot_of.values() if s not in keep), np.int64)
        if len(cand) < n:  # `apply` splits batches with more symbols than slots
            raise RuntimeError(f"{n} slots wanted, {len(cand)} evictable")
        order = np.argsort(self.last_seen[cand], kind="stable")[:n]
        return self._spill(cand[order].tolist())

    def drop_partitions(self, partitions: Iterable[int]) -> list[str]:
        """Forget every symbol of these partitions, on the device and in the host cache
        (they moved to another instance, whose restore reads them from the state topic)."""
        ps = set(partitions)
        slots = [s for s in self.slot_of.values() if int(self.partition[s]) in ps]
        out = [self._release(s) for s in slots]
        self.cache.drop_partitions(ps)
        for p in ps:
            self.stream_ts.pop(p, None)
        return out

    # ----------------------------------------------------------------- coming back
    def wanted(self, symbols: Iterable[str]) -> list[tuple[str, int, int]]:
        """Of `symbols`, those whose state is in the state topic only (not on the device,
        not in the host cache): (symbol, partition, offset) to fetch into the cache
        (`cache.fill`) before `apply` meets them."""
        if not self.cache.outside:
            return []
        return self.cache.wanted(s for s in set(symbols) if s not in self.slot_of)

    def _take(self, symbol: str, ts: int) -> StateRecord | None:
        """The cached state of `symbol` for a tick at `ts`, or None: none, unreadable, or
        older than the age limit (forgotten: the symbol starts afresh).

        Raises:
          LookupError: the state is in the state topic only (`wanted` was not fetched).
        """
        value = self.cache.take(symbol)
        if value is None:
            return None
        try:
            st = decode_state(value, self.buffer_len)
        except ValueError as e:
            log.warning("unreadable state of %r skipped (%s); it starts afresh", symbol, e)
            self.cache.forget(symbol)
            return None
        if ts - st.last_ts > self.max_age_ms:
            self.cache.forget(symbol)
            return None
        return st

    def _load(self, loaded: list[tuple[int, StateRecord]]) -> tuple[int, int]:
        """Put states into their (just allocated) slots: buffers and counters, then `(h, c)`
        as it was, or re-warmed from the buffer when another model version (or shape) made
        it. Returns (restored as they were, re-warmed)."""
        expect = (2, self.config.layers, self.config.units)
        same: list[tuple[int, np.ndarray]] = []
        rewarm: list[int] = []
        for slot, st in loaded:
            self.prices[slot], self.times[slot], self.volumes[slot] = (
                st.prices, st.times, st.volumes
            )  # fmt: skip
            self.partition[slot], self.offset[slot] = st.partition, st.offset
            self.count[slot], self.seq[slot], self.last_ts[slot] = st.count, st.seq, st.last_ts
            self.dirty[slot] = False
            if st.model == self.version and st.hc.shape == expect:
                same.append((slot, st.hc))
            else:
                rewarm.append(slot)
        if same:
            self.runtime.set_states(
                np.asarray([s for s, _ in same], np.int64), np.stack([hc for _, hc in same])
            )
        if rewarm:
            self.rewarm(rewarm)
            self.dirty[rewarm] = True  # the new model's state is not in the topic yet
        return len(same), len(rewarm)

    def _seat(
        self, ticks: Decoded, partition: np.ndarray, now: float
    ) -> tuple[dict[str, int], list[int], dict[int, int], list[str]]:
        """Step 0 of `apply`: a slot for every symbol of the batch, before any tick is looked
        at. The ones held stay (a symbol ticking in this batch is never evicted for a
        newcomer); the others come back from the host cache (or start afresh), in slots
        freed from the least recently seen. A state too old for a symbol's first tick here
        starts over.

        Returns:
          foreign (symbol -> the partition its state belongs to, not this batch's: its
          ticks are rejected), the slots starting afresh, last tick time per newly seated
          slot starting afresh, and the symbols moved off the device.
        """
        slot_of = self.slot_of
        first_i: dict[str, int] = {}
        for i, sym in enumerate(ticks.symbols):
            first_i.setdefault(sym, i)
        held = {sym: slot_of[sym] for sym in first_i if sym in slot_of}
        expired: set[str] = set()
        for sym, slot in list(held.items()):
            if int(ticks.ts[first_i[sym]]) - int(self.last_ts[slot]) > self.max_age_ms:
                self._release(slot)  # expired: starts afresh below, like a new symbol
                self.cache.forget(sym)
                del held[sym]
                expired.add(sym)
        keep = set(held.values())
        self.last_seen[list(keep)] = now
        foreign: dict[str, int] = {}
        states: dict[str, StateRecord | None] = {}
        for sym, i in first_i.items():
            if sym in held:
                continue
            src = ticks.index[i]
            p = None if sym in expired else self.cache.partition_of(sym)
            if p is not None and p != partition[src]:
                foreign[sym] = p
                continue
            states[sym] = None if sym in expired else self._take(sym, int(ticks.ts[i]))
        evicted: list[str] = []
        if len(states) > len(self._free):
            evicted = self._evict_lru(len(states) - len(self._free), keep)
        last_ts: dict[int, int] = {}
        new_slots: list[int] = []
        loaded: list[tuple[int, StateRecord]] = []
        for sym, st in states.items():
            slot = self._allocate(sym)
            self.last_seen[slot] = now
            if st is None:
                self.partition[slot] = partition[ticks.index[first_i[sym]]]
                new_slots.append(slot)
                last_ts[slot] = int(ticks.ts[first_i[sym]])
            else:
                loaded.append((slot, st))
        if loaded:
            self._load(loaded)
        return foreign, new_slots, last_ts, evicted

    def _saw(self, partitions: np.ndarray, ts: np.ndarray) -> None:
        """Note the newest tick time applied per partition (the age limit's clock)."""
        for p in np.unique(partitions).tolist():
            newest = int(ts[partitions == p].max())
            self.stream_ts[p] = max(self.stream_ts.get(p, newest), newest)

    # ----------------------------------------------------------------- checkpoints
    def dirty_symbols(self, partition: int) -> list[str]:
        """The symbols of `partition` whose latest state no record in the topic holds: on
        the device with ticks applied since their last record, or in the host cache
        unwritten."""
        return [sym for sym, s in self.slot_of.items()
                if self.dirty[s] and self.partition[s] == partition] + self.cache.pending(
                    partition)  # fmt: skip

    def has_pending(self, partition: int) -> bool:
        """Whether the host cache holds states of `partition` the topic lacks (a checkpoint
        is due even without new ticks)."""
        return self.cache.has_pending(partition)

    def checkpoint_symbols(self, symbols: Iterable[str]) -> Records:
        """State records of those of `symbols` still dirty (on the device) or unwritten (in
        the host cache), by partition (a chunk of a checkpoint round). Clears their dirty
        flag."""
        out: Records = {}
        slots = []
        for sym in symbols:
            s = self.slot_of.get(sym)
            if s is not None:
                if self.dirty[s]:
                    slots.append(s)
                continue
            p = self.cache.partition_of(sym)
            if p is not None and self.cache.is_pending(sym):
                value = self.cache.sending(sym)
                assert value is not None
                out.setdefault(p, []).append((sym.encode(), value))
        self._records(slots, out)
        return out

    def checkpoint(self, partitions: Iterable[int]) -> Records:
        """State records of the dirty symbols of these partitions (on the device and in the
        host cache), and tombstones of the states there too old to keep:
        `{partition: [(key, value or None), ...]}`. Clears dirty."""
        ps = set(partitions)
        out: Records = {p: [] for p in ps}
        slots = [s for s in self.slot_of.values() if self.dirty[s] and self.partition[s] in ps]
        self._records(slots, out)
        for p in ps:
            for sym in self.cache.pending(p):
                value = self.cache.sending(sym)
                assert value is not None
                out[p].append((sym.encode(), value))
            out[p] += self.tombstones_of(p)
        return out

    def tombstones_of(self, partition: int) -> list[tuple[bytes, bytes | None]]:
        """Delete records for the states of `partition` (off the device) whose last tick is
        more than the age limit before the partition's newest tick: they would start
        afresh anyway, and forgetting them bounds the topic and the cache's index."""
        newest = self.stream_ts.get(partition)
        if newest is None:
            return []
        old = self.cache.expired(partition, newest, self.max_age_ms, self.slot_of)
        return [(sym.encode(), None) for sym in old]

    def _encode(self, slots: list[int]) -> list[bytes]:
        """The state records of these slots (one gather of their `(h, c)`)."""
        if not slots:
            return []
        sl = np.asarray(slots, np.int64)
        meta = np.stack([self.partition[sl], self.offset[sl], self.count[sl], self.seq[sl],
                         self.last_ts[sl]], axis=1).astype(np.int64)  # fmt: skip
        return encode_states(
            [self.symbol_at[s] or "" for s in slots], self.version, meta, self.prices[sl],
            self.times[sl], self.volumes[sl], self.runtime.states_of(sl),
        )  # fmt: skip

    def _records(self, slots: list[int], out: Records) -> None:
        for s, value in zip(slots, self._encode(slots), strict=True):
            sym = self.symbol_at[s]
            assert sym is not None
            out.setdefault(int(self.partition[s]), []).append((sym.encode(), value))
        if slots:
            self.dirty[np.asarray(slots, np.int64)] = False

    # ----------------------------------------------------------------- restore
    def restore(
        self, values: Iterable[bytes], offsets: Iterable[int] | None = None
    ) -> tuple[int, int]:
        """Load state records (latest per symbol) into the host cache, then the most
        recently ticked of them into the free device slots (no symbol is evicted for them;
        the rest come to the device when they tick). A record from another model version is
        re-warmed from its buffer when it comes to the device; an unreadable one is skipped
        with a warning (that symbol starts afresh).

        Args:
          values: state records.
          offsets: each record's offset in the state topic, when read from it (the cache
            may then let go of them and fetch them again); without, they are kept until a
            checkpoint writes them.

        Returns:
          (restored, re-warmed) among those put on the device.
        """
        offs = iter(offsets) if offsets is not None else None
        taken: list[tuple[int, str]] = []  # (last_ts, symbol)
        for value in values:
            off = next(offs) if offs is not None else None
            try:
                info = record_info(value)
                if off is None:
                    self.cache.put(info.symbol, info.partition, value, dirty=False)
                elif len(self.cache) < self.cache.capacity or info.symbol in self.cache.held:
                    self.cache.fill(value, off)
                else:
                    self.cache.index(value, off)
                    continue
            except ValueError as e:
                log.warning("unreadable state record skipped (%s); that symbol starts afresh", e)
                continue
            if info.symbol not in self.slot_of:
                taken.append((info.last_ts, info.symbol))
        taken.sort(reverse=True)
        loaded: list[tuple[int, StateRecord]] = []
        for _, sym in taken[: len(self._free)]:
            st = self._take(sym, -(1 << 62))  # the age limit applies at the next tick
            if st is not None:
                loaded.append((self._allocate(sym), st))
                self.last_seen[self.slot_of[sym]] = self.clock()
        return self._load(loaded) if loaded else (0, 0)

    def rewarm(self, slots: list[int]) -> None:
        """Start these slots' state afresh from their buffers (after a model change): zero
        state, then the last `window` ticks' features, computed from real history."""
        sl = np.asarray(slots, np.int64)
        x = buffer_features(self.config, self.stats, self.prices[sl], self.times[sl],
                            self.volumes[sl], self.window)  # fmt: skip
        self.runtime.warm(sl, x)
