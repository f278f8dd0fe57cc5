"""Hot-swap rounds (pure): a new model's per-symbol state built beside the serving one.

`Engine.prepare_swap` runs round 1 in a worker thread (a new runtime, every held symbol warmed
from its buffer); `PendingSwap.catch_up` steps each symbol through exactly the ticks it
missed since the last round; `Engine.finish_swap` runs the last, short round between two
micro-batches and switches. `buffer_features` rebuilds features from a symbol's buffer alone,
as `Engine.apply` computed them, which is also what re-warming after a restore uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.checkpoint import LoadedModel
from model.features import history_features

__all__ = ["CATCH_UP_STEPS", "PendingSwap", "Snapshot", "buffer_features"]

CATCH_UP_STEPS = 8  # ticks per dispatch when a swap steps a symbol through what it missed


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
