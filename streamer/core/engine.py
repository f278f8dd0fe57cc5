"""The stream engine: per-symbol buffers and LSTM state, one batched step per micro-batch.

Pure and synchronous (no Kafka, no asyncio): `tickcast serve` feeds it decoded ticks and
publishes what it returns; tests drive it directly.

For every symbol the engine keeps, in preallocated arrays indexed by the symbol's slot:
the last `2 * window` prices, times and volumes (enough to compute `window` feature rows
from real history, which is what re-warming after a model swap needs), the tick count,
the last time and source offset, and on the device the LSTM state `(h, c)` (in
`model.runtime.Runtime`).

A micro-batch holds ticks of many symbols, several per symbol in order. `apply` validates
their order, computes each tick's features from its own history (`history_features`, the
function training used), and advances every symbol that ticked in ONE `Runtime.advance`
dispatch. A new symbol starts from zero state with its buffer filled with its first price;
this is exactly `model.evaluate`'s carried-state path warmed on the symbol's first window,
so live forecasts equal offline ones. The first `window - 1` forecasts of a symbol are
flagged `warming` (the state has seen less than a window).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from model.checkpoint import LoadedModel
from model.features import history_features, to_price
from streamer.core.ticks import Decoded, Rejected

log = logging.getLogger(__name__)

STATE_FORMAT = 1
MARKER_KEY = b"\x00partition"  # per-partition marker record in the state topic
_HEADER = struct.Struct("<I")
CATCH_UP_STEPS = 8  # ticks per dispatch when a swap steps a symbol through what it missed


@dataclass
class Forecasts:
    """One micro-batch's forecasts, columnar; row i answers input tick `index[i]`.

    `forecast`, `lower`, `upper` are the next tick's price (median) and its central 90%
    interval, in price units. `seq` counts the symbol's ticks from 1.
    """

    symbols: list[str]
    index: np.ndarray  # int64 [n], position of the tick in the decoded batch's input
    ts: np.ndarray  # int64 [n], epoch ms of the tick
    partition: np.ndarray  # int32 [n]
    offset: np.ndarray  # int64 [n]
    seq: np.ndarray  # int64 [n]
    price: np.ndarray  # float64 [n], the tick's price
    forecast: np.ndarray  # float64 [n]
    lower: np.ndarray  # float64 [n]
    upper: np.ndarray  # float64 [n]
    warming: np.ndarray  # bool [n]
    version: str
    sq_err_model: float = 0.0  # squared errors of the previous forecasts these ticks resolve
    sq_err_persistence: float = 0.0
    n_err: int = 0

    def __len__(self) -> int:
        return len(self.symbols)


@dataclass
class Applied:
    """What one `apply` did."""

    forecasts: Forecasts
    rejected: list[Rejected] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    step_s: float = 0.0  # time in the device step (features and bookkeeping excluded)


class Engine:
    """Symbols → slots, rolling buffers and carried LSTM state for up to `max_symbols`.

    Args:
      loaded: the loaded model (`model.checkpoint.load`).
      max_symbols: slots; beyond it the least recently seen symbol is evicted.
      idle_evict_s: evict symbols unseen for this long (seconds of `clock`).
      clock: seconds, monotonic (injectable for tests).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        max_symbols: int = 16384,
        idle_evict_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.stats = loaded.stats
        self.version = loaded.version
        self.window = w = self.config.window
        self.history = 2 * w
        self.max_symbols = max_symbols
        self.idle_evict_s = idle_evict_s
        self.clock = clock
        self.runtime = loaded.runtime(max_symbols, min_bucket=8)
        s, r = max_symbols, self.history
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

    def precompile(self) -> int:
        """Compile the shapes steady traffic uses (1 and a few ticks per symbol, every
        batch size up to `max_symbols` but at most 1,024) before the first tick."""
        sizes = [1 << k for k in range(3, 12) if 1 << (k - 1) < max(8, self.max_symbols)]
        n = self.runtime.precompile(sizes, steps=(1, 4, 6, 8))
        # A few busy symbols tick many times per batch: longer scans for small batches.
        n += self.runtime.precompile(sizes[:2], steps=(12, 16, 24, 32))
        hc = np.zeros((1, 2, self.config.layers, self.config.units), np.float32)
        # State gathers and scatters (checkpoints, restores, new symbols) up to every slot:
        # a checkpoint of a partition with 2,500 symbols would otherwise compile live.
        gathers = [1 << k for k in range(3, 31) if 1 << (k - 1) < max(8, self.max_symbols)]
        for b in gathers:
            slots = np.zeros(b // 2 + 1, np.int64)  # slot 0, unused yet: pads to size b
            self.runtime.set_states(slots, np.repeat(hc, len(slots), axis=0))
            self.runtime.states_of(slots)
            self.runtime.reset(slots)
        return n

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
            self.runtime.reset(idle)
        return out

    def drop_partitions(self, partitions: Iterable[int]) -> list[str]:
        """Forget every symbol of these partitions (they moved to another instance)."""
        ps = set(partitions)
        slots = [s for s in self.slot_of.values() if int(self.partition[s]) in ps]
        out = [self._release(s, tombstone=False) for s in slots]
        for p in ps:
            self.tombstones.pop(p, None)
        if slots:
            self.runtime.reset(slots)
        return out

    # ------------------------------------------------------------------- the step
    def apply(
        self,
        ticks: Decoded,
        partition: np.ndarray,
        offset: np.ndarray,
        skip_applied: bool = False,
    ) -> Applied:
        """Apply a micro-batch of decoded ticks, in input order per symbol.

        Args:
          ticks: decoded, individually valid ticks (`streamer.core.ticks.decode`).
          partition, offset: each input record's source `[n_input]` (indexed by
            `ticks.index`).
          skip_applied: drop, silently, a tick whose offset is not past its symbol's last
            applied offset: its state already holds it (replaying from a checkpoint marker
            when some symbols were checkpointed later than the marker).

        Returns:
          One forecast per accepted tick; ticks older than their symbol's previous tick, or
          arriving on another partition than the symbol's, are rejected untouched.
        """
        if len(ticks) > self.max_symbols:
            distinct: set[str] = set()
            for i, sym in enumerate(ticks.symbols):
                distinct.add(sym)
                if len(distinct) > self.max_symbols:
                    # More symbols than slots in one batch: apply the part that fits, then
                    # the rest (which evicts from the first part).
                    return self._split(ticks, i, partition, offset, skip_applied)
        now = self.clock()
        evicted: list[str] = []
        rejected: list[Rejected] = []
        if now - self._last_sweep > min(self.idle_evict_s, 60.0):
            evicted += self.evict_idle()

        # Symbols held that tick in this batch are in use: never evict them for a newcomer.
        slot_of = self.slot_of
        held = [s for s in map(slot_of.get, set(ticks.symbols)) if s is not None]
        self.last_seen[held] = now

        # 1. Order checks and slots, one pass in input order (a symbol's ticks stay in order).
        slot_col: list[int] = []
        k_col: list[int] = []
        keep: list[int] = []
        pending: dict[int, int] = {}  # slot -> ticks accepted so far in this batch
        last_ts: dict[int, int] = {}
        new_slots: list[int] = []
        for i, sym in enumerate(ticks.symbols):
            src = ticks.index[i]
            slot = slot_of.get(sym)
            if slot is None:
                slot = self._allocate(sym, evicted)
                self.last_seen[slot] = now  # touched: not a candidate for eviction
                self.partition[slot] = partition[src]
                new_slots.append(slot)
                last_ts[slot] = ticks.ts[i]
            else:
                if self.partition[slot] != partition[src]:
                    rejected.append(
                        Rejected(
                            src,
                            "partition_mismatch",
                            f"{sym!r} is served from partition {self.partition[slot]}",
                        )
                    )
                    continue
                if skip_applied and offset[src] <= self.offset[slot]:
                    continue
                if slot not in last_ts:
                    last_ts[slot] = int(self.last_ts[slot])
                    self.last_seen[slot] = now
            t = ticks.ts[i]
            if t < last_ts[slot]:
                rejected.append(
                    Rejected(
                        src, "stale_ts", f"ts {t} is older than {sym!r}'s last {last_ts[slot]}"
                    )
                )
                continue
            last_ts[slot] = t
            k = pending.get(slot, 0)
            pending[slot] = k + 1
            slot_col.append(slot)
            k_col.append(k)
            keep.append(i)
        if evicted:
            log.info("evicted %d symbols: %s", len(evicted), evicted[:5])

        m = len(keep)
        if m == 0:
            return Applied(self._empty(), rejected, evicted)
        kept = np.asarray(keep, np.int64)
        srcs = np.asarray(ticks.index, np.int64)[kept]
        ts = np.asarray(ticks.ts, np.int64)[kept]
        price = np.asarray(ticks.price, np.float64)[kept]
        vol = np.asarray(ticks.volume, np.float64)[kept]
        sl = np.asarray(slot_col, np.int64)
        kk = np.asarray(k_col, np.int64)

        # A new symbol's history is its first tick repeated (as offline featurize pads).
        if new_slots:
            ns = np.asarray(new_slots, np.int64)
            first = {s: j for j, s in reversed(list(enumerate(slot_col)))}
            fj = np.asarray([first[s] for s in new_slots], np.int64)
            self.prices[ns] = price[fj, None]
            self.times[ns] = ts[fj, None]
            self.volumes[ns] = vol[fj, None]
            self.runtime.reset(new_slots)

        # 2. Each tick's history: the symbol's buffer followed by its new ticks.
        uniq, u = np.unique(sl, return_inverse=True)
        counts = np.bincount(u).astype(np.int64)
        t_max = int(counts.max())
        r, w = self.history, self.window
        ext_p = np.concatenate([self.prices[uniq], np.zeros((len(uniq), t_max))], axis=1)
        ext_t = np.concatenate([self.times[uniq], np.zeros((len(uniq), t_max), np.int64)], axis=1)
        ext_v = np.concatenate([self.volumes[uniq], np.full((len(uniq), t_max), np.nan)], axis=1)
        ext_p[u, r + kk] = price
        ext_t[u, r + kk] = ts
        ext_v[u, r + kk] = vol
        # A tick without volume repeats its symbol's previous volume (no change).
        gaps = np.isnan(ext_v)
        if gaps.any():
            idx = np.where(gaps, 0, np.arange(ext_v.shape[1])[None, :])
            np.maximum.accumulate(idx, axis=1, out=idx)
            ext_v = np.take_along_axis(ext_v, idx, axis=1)
        cols = r + kk
        windows = ext_p[u[:, None], cols[:, None] + np.arange(-w + 1, 1)[None, :]]
        v_now, v_prev = ext_v[u, cols], ext_v[u, cols - 1]
        unknown = np.isnan(v_now) | np.isnan(v_prev)
        if unknown.any():
            v_now, v_prev = np.where(unknown, 0.0, v_now), np.where(unknown, 0.0, v_prev)
        x = history_features(self.config, self.stats, ts, windows, v_now, v_prev)

        # 3. One dispatch for every symbol that ticked, several ticks each, in order.
        xs = np.zeros((t_max, len(uniq), x.shape[1]), np.float32)
        xs[kk, u] = x
        t0 = time.perf_counter()
        out = self.runtime.advance(uniq, xs, counts)[kk, u]
        step_s = time.perf_counter() - t0
        fc, lo, hi = to_price(self.stats, price, out[:, 0], out[:, 1])

        # 4. Live error of the forecasts these ticks resolve (model vs persistence).
        grid = np.full((t_max, len(uniq)), np.nan)
        grid[kk, u] = fc
        prev_fc = np.where(kk == 0, self.last_forecast[sl], grid[np.maximum(kk - 1, 0), u])
        prev_p = ext_p[u, cols - 1]
        ok = ~np.isnan(prev_fc)
        n_err = int(ok.sum())
        se_m = float(np.sum((price[ok] - prev_fc[ok]) ** 2))
        se_p = float(np.sum((price[ok] - prev_p[ok]) ** 2))

        # 5. Book-keeping: buffers keep the last `history` ticks, counters advance.
        keep_cols = counts[:, None] + np.arange(r)[None, :]
        self.prices[uniq] = np.take_along_axis(ext_p, keep_cols, axis=1)
        self.times[uniq] = np.take_along_axis(ext_t, keep_cols, axis=1)
        self.volumes[uniq] = np.take_along_axis(ext_v, keep_cols, axis=1)
        n_before = self.count[sl]
        seq = self.seq[sl] + kk + 1
        self.count[uniq] += counts
        self.seq[uniq] += counts
        last = kk == counts[u] - 1
        self.last_ts[sl[last]] = ts[last]
        self.offset[sl[last]] = offset[srcs[last]]
        self.last_forecast[sl[last]] = fc[last]
        self.last_seen[uniq] = now
        self.dirty[uniq] = True

        f = Forecasts(
            symbols=[ticks.symbols[i] for i in keep],
            index=srcs,
            ts=ts,
            partition=np.asarray(partition, np.int32)[srcs],
            offset=np.asarray(offset, np.int64)[srcs],
            seq=seq,
            price=price,
            forecast=fc,
            lower=lo,
            upper=hi,
            warming=(n_before + kk + 1) < w,
            version=self.version,
            sq_err_model=se_m,
            sq_err_persistence=se_p,
            n_err=n_err,
        )
        return Applied(f, rejected, evicted, step_s)

    def _split(
        self, ticks: Decoded, at: int, partition: np.ndarray, offset: np.ndarray, skip: bool
    ) -> Applied:
        def part(idx: range) -> Decoded:
            return Decoded(
                ticks.symbols[idx.start : idx.stop],
                ticks.ts[idx.start : idx.stop],
                ticks.price[idx.start : idx.stop],
                ticks.volume[idx.start : idx.stop],
                ticks.index[idx.start : idx.stop],
            )

        first = self.apply(part(range(at)), partition, offset, skip)
        rest = self.apply(part(range(at, len(ticks))), partition, offset, skip)
        f1, f2 = first.forecasts, rest.forecasts
        arrays = ("index", "ts", "partition", "offset", "seq", "price", "forecast", "lower",
                  "upper", "warming")  # fmt: skip
        cat = {n: np.concatenate([getattr(f1, n), getattr(f2, n)]) for n in arrays}
        merged = Forecasts(
            f1.symbols + f2.symbols,
            **cat,
            version=self.version,
            sq_err_model=f1.sq_err_model + f2.sq_err_model,
            sq_err_persistence=f1.sq_err_persistence + f2.sq_err_persistence,
            n_err=f1.n_err + f2.n_err,
        )
        return Applied(
            merged,
            first.rejected + rest.rejected,
            first.evicted + rest.evicted,
            first.step_s + rest.step_s,
        )

    def _empty(self) -> Forecasts:
        z = np.zeros(0)
        zi = np.zeros(0, np.int64)
        return Forecasts(
            [], zi, zi, zi.astype(np.int32), zi, zi, z, z, z, z, np.zeros(0, bool), self.version
        )

    # ----------------------------------------------------------------- checkpoints
    def dirty_symbols(self, partition: int) -> list[str]:
        """The symbols of `partition` with ticks applied since their last state record."""
        return [sym for sym, s in self.slot_of.items()
                if self.dirty[s] and self.partition[s] == partition]  # fmt: skip

    def checkpoint_symbols(
        self, symbols: Iterable[str]
    ) -> dict[int, list[tuple[bytes, bytes | None]]]:
        """State records of those of `symbols` still held and dirty, by partition (a chunk
        of a checkpoint round). Clears their dirty flag."""
        out: dict[int, list[tuple[bytes, bytes | None]]] = {}
        slots = [s for s in map(self.slot_of.get, symbols) if s is not None and self.dirty[s]]
        self._records(slots, out)
        return out

    def checkpoint(self, partitions: Iterable[int]) -> dict[int, list[tuple[bytes, bytes | None]]]:
        """State records of the dirty symbols of these partitions, and tombstones of the
        symbols evicted there: `{partition: [(key, value or None), ...]}`. Clears dirty."""
        ps = set(partitions)
        out: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in ps}
        slots = [s for s in self.slot_of.values() if self.dirty[s] and self.partition[s] in ps]
        self._records(slots, out)
        for p in ps:
            out[p] += self.tombstones_of(p)
        return out

    def tombstones_of(self, partition: int) -> list[tuple[bytes, bytes | None]]:
        """Delete records for the symbols evicted from `partition` (and not back since)."""
        return [(sym.encode(), None) for sym in self.tombstones.pop(partition, set())
                if sym not in self.slot_of]  # fmt: skip

    def _records(self, slots: list[int], out: dict[int, list[tuple[bytes, bytes | None]]]) -> None:
        if slots:
            sl = np.asarray(slots, np.int64)
            hc = self.runtime.states_of(sl)
            # Every record's arrays as one [n, bytes] block: one copy, not four per symbol.
            body = np.concatenate(
                [self.prices[sl].view(np.uint8), self.times[sl].view(np.uint8),
                 self.volumes[sl].view(np.uint8),
                 np.ascontiguousarray(hc, np.float32).reshape(len(sl), -1).view(np.uint8)],
                axis=1,
            )  # fmt: skip
            meta = zip(self.partition[sl].tolist(), self.offset[sl].tolist(),
                       self.count[sl].tolist(), self.seq[sl].tolist(),
                       self.last_ts[sl].tolist(), strict=True)  # fmt: skip
            shape = list(hc.shape[1:])
            for j, (s, (part, off, cnt, seq, last)) in enumerate(zip(slots, meta, strict=True)):
                sym = self.symbol_at[s]
                assert sym is not None
                header = orjson.dumps({
                    "format": STATE_FORMAT, "symbol": sym, "model": self.version,
                    "partition": part, "offset": off, "count": cnt, "seq": seq,
                    "last_ts": last, "history": self.history, "hc": shape,
                })  # fmt: skip
                out.setdefault(part, []).append(
                    (sym.encode(), _HEADER.pack(len(header)) + header + body[j].tobytes())
                )
            self.dirty[sl] = False

    def restore(self, values: Iterable[bytes]) -> tuple[int, int]:
        """Load state records (latest per symbol). A record from another model version is
        re-warmed from its buffer; an unreadable one is skipped with a warning (the symbol
        starts afresh). Beyond `max_symbols` the least recently seen are evicted as usual.
        Returns (restored, re-warmed)."""
        loaded: dict[int, tuple[str, np.ndarray | None]] = {}  # slot -> (symbol, hc or None)
        evicted: list[str] = []
        expect = (2, self.config.layers, self.config.units)
        r = self.history
        for value in values:
            try:
                (n,) = _HEADER.unpack_from(value)
                h = orjson.loads(value[4 : 4 + n])
                sym = h["symbol"]
                if h.get("format") != STATE_FORMAT or h["history"] != r:
                    raise ValueError(f"format {h.get('format')}, history {h.get('history')}")
                body = memoryview(value)[4 + n :]
                if len(body) != 24 * r + 4 * int(np.prod(h["hc"])):
                    raise ValueError(f"{len(body)} bytes of arrays")
                prices = np.frombuffer(body[: 8 * r], np.float64)
                times = np.frombuffer(body[8 * r : 16 * r], np.int64)
                volumes = np.frombuffer(body[16 * r : 24 * r], np.float64)
                hc = np.frombuffer(body[24 * r :], np.float32)
                meta = (int(h["partition"]), int(h["offset"]), int(h["count"]), int(h["seq"]))
                last_ts = int(h["last_ts"])
            except (ValueError, KeyError, TypeError, struct.error) as e:
                log.warning("unreadable state record skipped (%s); that symbol starts afresh", e)
                continue
            slot = self.slot_of.get(sym)
            if slot is None:
                slot = self._allocate(sym, evicted)
            self.prices[slot], self.times[slot], self.volumes[slot] = prices, times, volumes
            self.partition[slot], self.offset[slot], self.count[slot], self.seq[slot] = meta
            self.last_ts[slot] = last_ts
            self.gen[slot] += 1
            self.last_seen[slot] = self.clock()
            self.dirty[slot] = False
            same = h["model"] == self.version and tuple(h["hc"]) == expect
            loaded[slot] = (sym, hc.reshape(expect) if same else None)
        # A slot taken over by a later record (beyond max_symbols) keeps only that one.
        live = {s: v for s, v in loaded.items() if self.symbol_at[s] == v[0]}
        restored = [(s, hc) for s, (_, hc) in live.items() if hc is not None]
        rewarm = [s for s, (_, hc) in live.items() if hc is None]
        if evicted:
            log.warning(
                "restore beyond max_symbols=%d evicted %d symbols", self.max_symbols, len(evicted)
            )
        if restored:
            self.runtime.set_states(
                np.asarray([s for s, _ in restored]), np.stack([hc for _, hc in restored])
            )
        if rewarm:
            self.rewarm(rewarm)
        return len(restored), len(rewarm)

    def rewarm(self, slots: list[int]) -> None:
        """Start these slots' state afresh from their buffers (after a model change): zero
        state, then the last `window` ticks' features, computed from real history."""
        sl = np.asarray(slots, np.int64)
        x = buffer_features(self.config, self.stats, self.prices[sl], self.times[sl],
                            self.volumes[sl], self.window)  # fmt: skip
        self.runtime.warm(sl, x)

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

    def prepare_swap(self, loaded: LoadedModel, snap: Snapshot) -> PendingSwap:
        """Round 1 of a swap, safe to run in a worker thread while the engine serves: a new
        runtime for `loaded`, every symbol of `snap` warmed from its buffer, and the
        kernels the final round may need compiled. Raises ValueError for a model of another
        config (a swap keeps the features and the state's shape)."""
        if loaded.config != self.config:
            raise ValueError(f"config {loaded.config} differs from the serving {self.config}")
        runtime = loaded.runtime(self.max_symbols, min_bucket=8)
        pending = PendingSwap(loaded, runtime, {})
        # Compile what the final round and steady serving use, off the serving thread.
        sizes = [1 << k for k in range(3, 12) if 1 << (k - 1) < max(8, self.max_symbols)]
        runtime.precompile(sizes[:4], steps=(1, 4, 6, 8))
        runtime.precompile_warm(sizes[:4])
        pending.catch_up(snap)
        return pending

    def finish_swap(self, pending: PendingSwap) -> tuple[str, int]:
        """The final round, between micro-batches: bring the symbols that ticked since the
        last round up to date (a few steps each), then serve the new model. Returns the
        previous version and the number of symbols caught up here."""
        n = pending.catch_up(self._live())
        old = self.version
        p = pending.loaded
        self.loaded, self.stats, self.version = p, p.stats, p.version
        self.runtime = pending.runtime
        self.dirty[np.fromiter(self.slot_of.values(), np.int64, len(self.slot_of))] = True
        self.last_forecast[:] = np.nan  # the next error is the new model's own
        return old, n


@dataclass
class Snapshot:
    """Held symbols at one moment: slots `[n]`, their symbols, tick counts `seq` `[n]` and
    buffers `[n, history]` (prices, epoch-ms times, volumes)."""

    slots: np.ndarray
    symbols: list[str]
    seq: np.ndarray
    prices: np.ndarray
    times: np.ndarray
    volumes: np.ndarray
    gen: np.ndarray  # [n] the slot's generation: another value means its state restarted


@dataclass
class PendingSwap:
    """A model being brought up to date beside the serving one.

    `done` maps slot -> (symbol, seq) the new runtime's state reflects. Each `catch_up`
    advances it to a newer snapshot: a symbol that ticked k times since is stepped k times
    through features rebuilt from its buffer (k <= history - window + 1), anything else
    (new, replaced, restored out of order, or too far behind) is warmed from its buffer's
    last `window` ticks, as a restore re-warms."""

    loaded: LoadedModel
    runtime: Any  # model.runtime.Runtime
    done: dict[int, tuple[str, int, int]]  # slot -> (symbol, generation, seq)

    def catch_up(self, snap: Snapshot) -> int:
        """Advance the new state to `snap`; returns how many symbols it touched."""
        cfg, stats = self.loaded.config, self.loaded.stats
        w, r = cfg.window, snap.prices.shape[1]
        limit = r - w + 1
        step_rows, step_k, warm_rows = [], [], []
        gens = snap.gen.tolist()
        for j, (slot, sym, seq) in enumerate(zip(snap.slots.tolist(), snap.symbols,
                                                 snap.seq.tolist(), strict=True)):  # fmt: skip
            before = self.done.get(slot)
            same = before is not None and before[:2] == (sym, gens[j])
            k = seq - before[2] if same and before is not None else -1
            if k == 0:
                continue
            if 1 <= k <= limit:
                step_rows.append(j)
                step_k.append(k)
            else:
                warm_rows.append(j)
        if warm_rows:
            wj = np.asarray(warm_rows, np.int64)
            x = buffer_features(cfg, stats, snap.prices[wj], snap.times[wj], snap.volumes[wj], w)
            self.runtime.warm(snap.slots[wj], x)
        if step_rows:
            sj = np.asarray(step_rows, np.int64)
            ks = np.asarray(step_k, np.int64)
            k_max = int(ks.max())
            x = buffer_features(cfg, stats, snap.prices[sj], snap.times[sj], snap.volumes[sj],
                                k_max)  # fmt: skip
            # Slot b's last k_b rows, moved to steps 0..k_b-1: [k_max, batch, features].
            t = np.arange(k_max)
            src = np.minimum(k_max - ks[None, :] + t[:, None], k_max - 1)
            xs = x[np.arange(len(sj))[None, :], src].astype(np.float32)
            # At most CATCH_UP_STEPS per dispatch: the scan lengths serving compiled already.
            for c in range(0, k_max, CATCH_UP_STEPS):
                live = ks > c
                n = np.minimum(ks[live] - c, CATCH_UP_STEPS)
                chunk = xs[c : c + int(n.max()), live]
                self.runtime.advance(snap.slots[sj][live], chunk, n)
        for slot, sym, g, seq in zip(snap.slots.tolist(), snap.symbols, gens,
                                     snap.seq.tolist(), strict=True):  # fmt: skip
            self.done[slot] = (sym, int(g), seq)
        return len(step_rows) + len(warm_rows)


def buffer_features(
    config: Any,
    stats: Any,
    prices: np.ndarray,
    times: np.ndarray,
    volumes: np.ndarray,
    k: int,
) -> np.ndarray:
    """Features of the last `k` ticks of each buffer, rebuilt from the buffer alone.

    Args:
      prices, times, volumes: per-symbol buffers `[n, history]`, oldest first (prices > 0,
        times epoch ms, volumes NaN where unknown).
      k: rows wanted, 1 <= k <= history - window + 1 (each row needs `window` prices).

    Returns:
      `[n, k, features]` float32, oldest row first, exactly as `Engine.apply` computed them
      (given the same statistics).
    """
    n, r = prices.shape
    w = config.window
    if not 1 <= k <= r - w + 1:
        raise ValueError(f"k={k} rows need a history of at least {k + w - 1}, have {r}")
    rows = np.arange(r - k, r)
    idx = rows[:, None] + np.arange(-w + 1, 1)[None, :]  # [k, w] price columns per row
    windows = prices[:, idx]  # [n, k, w]
    ts = times[:, rows]
    v_now, v_prev = volumes[:, rows], volumes[:, rows - 1]
    unknown = np.isnan(v_now) | np.isnan(v_prev)
    v_now, v_prev = np.where(unknown, 0.0, v_now), np.where(unknown, 0.0, v_prev)
    x = history_features(
        config, stats, ts.reshape(-1), windows.reshape(-1, w), v_now.reshape(-1),
        v_prev.reshape(-1),
    )  # fmt: skip
    return x.reshape(n, k, -1)


def encode_marker(next_offset: int, version: str) -> bytes:
    """The per-partition marker: every symbol record of this partition in the state topic
    reflects exactly the ticks before `next_offset`."""
    return orjson.dumps({"format": STATE_FORMAT, "next_offset": next_offset, "model": version})


def decode_marker(value: bytes) -> int:
    return int(orjson.loads(value)["next_offset"])
