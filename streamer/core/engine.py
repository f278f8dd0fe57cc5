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
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model.checkpoint import LoadedModel
from model.features import history_features, to_price
from streamer.core.forecasts import Forecasts
from streamer.core.persistence import STATE_MAX_AGE_S, SlotStates
from streamer.core.statecache import StateCache
from streamer.core.swap import PendingSwap, Snapshot
from streamer.core.ticks import Decoded, Rejected

log = logging.getLogger(__name__)

SHORT_SCAN = 8  # most ticks per symbol in one dispatch, for any batch size (precompiled)
LONG_SCAN, LONG_SCAN_BATCH = 32, 16  # for batches of at most 16 symbols, up to 32 ticks each


@dataclass
class Applied:
    """What one `apply` did."""

    forecasts: Forecasts
    rejected: list[Rejected] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    step_s: float = 0.0  # time in the device step (features and bookkeeping excluded)
    skipped: list[int] = field(default_factory=list)  # input indices `skip_applied` dropped


class Engine(SlotStates):
    """Symbols → slots, rolling buffers and carried LSTM state for up to `max_symbols`.

    Eviction frees a device slot, never a symbol's state (`core.persistence`): an evicted
    symbol's state record goes to `cache` (a `StateCache`, which the state topic backs),
    and the symbol's next tick takes it back into a slot, so it continues where it stopped
    (same `seq`, same state). Only a state whose last tick is more than `state_max_age_s`
    (tick time) before the symbol's next tick starts afresh, wherever it is held; one made
    by another model version is re-warmed from its buffer.

    Args:
      loaded: the loaded model (`model.checkpoint.load`).
      max_symbols: device slots; beyond it the least recently seen symbol's state moves to
        the host cache.
      idle_evict_s: move symbols unseen for this long (seconds of `clock`) off the device.
      clock: seconds, monotonic (injectable for tests).
      cache: where evicted states wait (default: one holding `max_symbols` records).
      state_max_age_s: a symbol whose tick comes more than this after its state's last
        tick (tick timestamps) starts afresh.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        max_symbols: int = 16384,
        idle_evict_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        cache: StateCache | None = None,
        state_max_age_s: float = STATE_MAX_AGE_S,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.stats = loaded.stats
        self.version = loaded.version
        self.window = w = self.config.window
        self.buffer_len = 2 * w  # ticks kept per symbol
        super().__init__(max_symbols, self.buffer_len, idle_evict_s, clock, cache, state_max_age_s)
        self.runtime = loaded.runtime(max_symbols, min_bucket=8)

    def _advance(self, slots: np.ndarray, xs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """`Runtime.advance` in dispatches of the lengths `precompile` compiled: at most
        `LONG_SCAN` steps for up to `LONG_SCAN_BATCH` symbols, `SHORT_SCAN` for more. A
        backlog (many ticks per symbol in one batch, as after a fail-over) then never
        compiles a new shape on the serving thread, which would stall it (and the consumer's
        heartbeats) for seconds. Equal to one dispatch: each slot's ticks run in order,
        carrying its state from chunk to chunk. `xs [time, batch, features]` → `[time,
        batch, 2]`."""
        t_max = xs.shape[0]
        limit = LONG_SCAN if len(slots) <= LONG_SCAN_BATCH else SHORT_SCAN
        if t_max <= limit:
            return self.runtime.advance(slots, xs, counts)
        out = np.zeros((t_max, len(slots), 2), np.float32)
        for c in range(0, t_max, limit):
            n = np.minimum(counts - c, limit)
            live = n > 0
            end = min(c + limit, t_max)
            got = self.runtime.advance(slots[live], xs[c:end][:, live], n[live])
            out[c:end, live] = got[: end - c]
        return out

    def precompile(self) -> int:
        """Compile the shapes steady traffic uses (1 and a few ticks per symbol, every
        batch size up to `max_symbols` but at most 1,024) before the first tick."""
        sizes = [1 << k for k in range(3, 12) if 1 << (k - 1) < max(8, self.max_symbols)]
        n = self.runtime.precompile(sizes, steps=(1, 4, 6, SHORT_SCAN))
        # A few busy symbols tick many times per batch: longer scans for small batches.
        n += self.runtime.precompile(sizes[:2], steps=(12, 16, 24, LONG_SCAN))
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
          skip_applied: drop a tick whose offset is not past its symbol's last applied
            offset (reported in `Applied.skipped`): its state already holds it (replaying
            from a checkpoint marker when some symbols were checkpointed later than it).

        Returns:
          One forecast per accepted tick; ticks older than their symbol's previous tick, or
          arriving on another partition than the symbol's, are rejected untouched. Every
          input tick is one forecast, one rejection or one skip.
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

        # 0. A slot for every symbol of the batch, its state back from the host cache.
        foreign, new_slots, last_ts, seated_out = self._seat(ticks, partition, now)
        evicted += seated_out

        # 1. Order checks, one pass in input order (a symbol's ticks stay in order).
        slot_of = self.slot_of
        skipped: list[int] = []
        slot_col: list[int] = []
        k_col: list[int] = []
        keep: list[int] = []
        pending: dict[int, int] = {}  # slot -> ticks accepted so far in this batch
        for i, sym in enumerate(ticks.symbols):
            src = ticks.index[i]
            if sym in foreign:
                rejected.append(
                    Rejected(src, "partition_mismatch",
                             f"{sym!r} is served from partition {foreign[sym]}")
                )  # fmt: skip
                continue
            slot = slot_of[sym]
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
                skipped.append(src)
                continue
            if slot not in last_ts:
                last_ts[slot] = int(self.last_ts[slot])
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
            log.info("evicted %d symbols from the device: %s", len(evicted), evicted[:5])

        m = len(keep)
        if m == 0:
            return Applied(Forecasts.empty(self.version), rejected, evicted, skipped=skipped)
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
        r, w = self.buffer_len, self.window
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
        out = self._advance(uniq, xs, counts)[kk, u]
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

        # 5. Book-keeping: buffers keep the last `buffer_len` ticks, counters advance.
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
        self._saw(np.asarray(partition, np.int32)[srcs], ts)

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
        return Applied(f, rejected, evicted, step_s, skipped)

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
            first.skipped + rest.skipped,
        )

    # ----------------------------------------------------------------- model swap
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
