"""Device-resident LSTM state for many symbols and one jit step for any subset of them.

This is the piece the stream engine drives. The state of every slot (one slot per live
symbol) stays on the device as `hc: [2, layers, slots + 1, units]` ((h, c) stacked); the
extra last slot is scratch that absorbs the padding rows of a bucketed batch. A step moves
only the new inputs
`[batch, features]` in and the forecasts `[batch, 2]` out.

Why it is shaped this way (measured on a 2-core CPU, see BENCHMARKS.md):
* a plain `jax.jit` over the parameters packed into one vector, not `nnx.jit` over the
  module: calling through NNX costs about a millisecond per call, the step itself tens of
  microseconds, and every extra array argument costs host time to flatten;
* synchronous CPU dispatch: the asynchronous default adds ~14 µs per call and we block on
  the result anyway;
* batch sizes padded to powers of two, so a steady stream compiles a handful of shapes
  once and never again;
* the state buffer donated to the step, so XLA updates it in place instead of copying
  `[2, layers, slots, units]` every tick.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig
from model.lstm import LSTMState, Params, forward_fn, step_fn

__all__ = [
    "Runtime",
    "bucket",
    "bucket_steps",
    "configure_jax",
    "enable_compile_cache",
    "pack",
    "unpack",
]


def configure_jax(compile_cache: bool = False) -> None:
    """Apply tickcast's JAX settings; called by entry points (CLI, services, benchmarks,
    the test session), never on import.

    The host blocks on every step's result, so asynchronous CPU dispatch only adds latency:
    it is turned off. `compile_cache=True` also turns on the persistent compilation cache
    (`enable_compile_cache`)."""
    jax.config.update("jax_cpu_enable_async_dispatch", False)  # type: ignore[no-untyped-call]
    if compile_cache:
        enable_compile_cache()


def bucket(n: int, smallest: int = 1) -> int:
    """Smallest power of two >= max(n, smallest)."""
    n = max(n, smallest, 1)
    return 1 << (n - 1).bit_length()


def enable_compile_cache(path: str | None = None) -> str:
    """Keep compiled kernels on disk across processes (JAX's persistent compilation cache),
    so a restarted server steps at full speed at once. Default folder:
    `$TICKCAST_JAX_CACHE` or `~/.cache/tickcast/jax`."""
    import os

    folder = (
        path or os.environ.get("TICKCAST_JAX_CACHE") or os.path.expanduser("~/.cache/tickcast/jax")
    )
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)  # type: ignore[no-untyped-call]
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # type: ignore[no-untyped-call]
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)  # type: ignore[no-untyped-call]
    return folder


def bucket_steps(n: int) -> int:
    """Padded length of a multi-tick dispatch: 4, 6, 8, 12, 16, 24, … (two per octave, so at
    most a third of the steps are padding)."""
    b = 4
    while b < n:
        b = b * 3 // 2 if b & (b - 1) == 0 else b * 4 // 3
    return b


Layout = tuple[tuple[int, ...], ...]  # shapes of the parameter leaves, in tree order
BLOCK = 1024  # rows per block of a large step: keeps the working set in cache


def pack(params: Params) -> tuple[jax.Array, Layout, Any]:
    """Flatten the parameters into one float32 vector plus the static layout to undo it.

    Every array argument of a jitted call costs host time to flatten and check; one vector
    instead of ten leaves takes a few microseconds off every step.
    """
    leaves, treedef = jax.tree.flatten(params)
    flat = jnp.concatenate([jnp.ravel(a).astype(jnp.float32) for a in leaves])
    return flat, tuple(tuple(a.shape) for a in leaves), treedef


def unpack(flat: jax.Array, layout: Layout, treedef: Any) -> Params:
    """Inverse of `pack` (inside jit the slices are free views)."""
    leaves, at = [], 0
    for shape in layout:
        n = math.prod(shape)
        leaves.append(flat[at : at + n].reshape(shape))
        at += n
    out: Params = jax.tree.unflatten(treedef, leaves)
    return out


def _from_rows(rows: jax.Array) -> LSTMState:
    """`[batch, 2, layers, units]` (a row per slot) -> (h, c) `[layers, batch, units]`."""
    t = jnp.transpose(rows, (1, 2, 0, 3))
    return LSTMState(t[0], t[1])


def _to_rows(state: LSTMState) -> jax.Array:
    return jnp.transpose(jnp.stack([state.h, state.c]), (2, 0, 1, 3))


@functools.cache
def _kernels(layout: Layout, treedef: Any) -> tuple[Any, Any, Any, Any]:
    """The jitted step, warm-up and windowed pass for one parameter layout (cached, so a
    model swap with the same config reuses the compiled code)."""

    def step(
        flat: jax.Array, hc: jax.Array, slots: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        # hc [slots + 1, 2, layers, units]; slots [batch] int32 (distinct, except padding
        # rows that all point at the scratch slot); x [batch, features] -> forecasts [batch, 2].
        params = unpack(flat, layout, treedef)
        if len(slots) <= BLOCK:
            new, out = step_fn(params, _from_rows(hc[slots]), x)
            return hc.at[slots].set(_to_rows(new)), out

        # Large batches go through in blocks so each block's activations stay in cache
        # (a [16384, 200] gate block does not); buckets are powers of two, so BLOCK divides.
        def block(carry: jax.Array, sx: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            s, xb = sx
            new, o = step_fn(params, _from_rows(carry[s]), xb)
            return carry.at[s].set(_to_rows(new)), o

        nb = len(slots) // BLOCK
        hc, out = jax.lax.scan(block, hc, (slots.reshape(nb, BLOCK), x.reshape(nb, BLOCK, -1)))
        return hc, out.reshape(-1, out.shape[-1])

    def warm(
        flat: jax.Array, hc: jax.Array, slots: jax.Array, windows: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        # Reset the slots to zero state and run them through windows [batch, time, features].
        new, out = forward_fn(unpack(flat, layout, treedef), windows)
        return hc.at[slots].set(_to_rows(new)), out[:, -1]

    def window(flat: jax.Array, windows: jax.Array) -> jax.Array:
        return forward_fn(unpack(flat, layout, treedef), windows)[1][:, -1]

    def advance(
        flat: jax.Array, hc: jax.Array, slots: jax.Array, xs: jax.Array, counts: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        # xs [time, batch, features]; slot b takes steps t < counts[b] and keeps its state
        # through the padded steps after that. Returns outputs [time, batch, 2].
        params = unpack(flat, layout, treedef)

        def tick(carry: LSTMState, tx: tuple[jax.Array, jax.Array]) -> tuple[LSTMState, jax.Array]:
            t, x = tx
            new, out = step_fn(params, carry, x)
            live = (t < counts)[None, :, None]
            kept = LSTMState(jnp.where(live, new.h, carry.h), jnp.where(live, new.c, carry.c))
            return kept, out

        steps = jnp.arange(xs.shape[0])
        new, out = jax.lax.scan(tick, _from_rows(hc[slots]), (steps, xs))
        return hc.at[slots].set(_to_rows(new)), out

    return (
        jax.jit(step, donate_argnums=(1,)),
        jax.jit(warm, donate_argnums=(1,)),
        jax.jit(window),
        jax.jit(advance, donate_argnums=(1,)),
    )


class Runtime:
    """State for `n_slots` symbols on one device, stepped in batches.

    Args:
      params: network parameters (`model.lstm.params_of(module)`).
      config: the model's configuration.
      n_slots: how many symbols can be live at once.
      min_bucket: smallest padded batch (fewer distinct shapes at the cost of some padding).
      device: where state and parameters live (default: JAX's default device).
    """

    def __init__(
        self,
        params: Params,
        config: ModelConfig,
        n_slots: int,
        *,
        min_bucket: int = 1,
        device: jax.Device | None = None,
    ) -> None:
        if n_slots < 1:
            raise ValueError("n_slots must be >= 1")
        self.config = config
        self.n_slots = n_slots
        self.min_bucket = min_bucket
        self.device = device or jax.devices()[0]
        flat, layout, treedef = pack(params)
        self.flat = jax.device_put(flat, self.device)
        self._step, self._warm, self._window, self._advance = _kernels(layout, treedef)
        # (h, c) of every slot: [slots + 1, 2, layers, units], slot-major so a gather or
        # scatter moves one contiguous 2·layers·units row per symbol; the last is scratch.
        shape = (n_slots + 1, 2, config.layers, config.units)
        self.hc = jax.device_put(jnp.zeros(shape, jnp.float32), self.device)
        self._seen = np.zeros(n_slots, bool)  # scratch for the duplicate-slot check

    @property
    def scratch(self) -> int:
        return self.n_slots

    def _pad(self, slots: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Pad a batch to its bucket: padding rows point at the scratch slot."""
        slots = np.asarray(slots, np.int32)
        rows = np.asarray(rows, np.float32)
        n = len(slots)
        if n and (int(slots.min()) < 0 or int(slots.max()) >= self.n_slots):
            raise IndexError(f"slot out of range [0, {self.n_slots})")
        if n > 1:  # duplicates: mark each slot in a reusable mask, count the marks
            self._seen[slots] = True
            distinct = int(np.count_nonzero(self._seen))
            self._seen[slots] = False
            if distinct != n:
                raise ValueError("a batch may hold each slot once; apply a symbol's ticks in order")
        b = bucket(n, self.min_bucket)
        if b == n:  # already a bucket size: nothing to copy
            return slots, rows, n
        ps = np.full(b, self.scratch, np.int32)
        ps[:n] = slots
        pr = np.zeros((b, *rows.shape[1:]), np.float32)
        pr[:n] = rows
        return ps, pr, n

    def step(self, slots: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Advance the given slots by one tick.

        Args:
          slots: distinct slot indices `[batch]`.
          x: their features `[batch, features]`.

        Returns:
          Forecasts `[batch, 2]` float32: mean and scale of the next standardized return.
        """
        ps, px, n = self._pad(slots, x)
        self.hc, out = self._step(self.flat, self.hc, ps, px)
        return np.asarray(out)[:n]

    def advance(self, slots: np.ndarray, xs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Apply several ticks per slot, in order, in one dispatch.

        Args:
          slots: distinct slot indices `[batch]`.
          xs: features `[time, batch, features]`; slot b's ticks are `xs[:counts[b], b]`.
          counts: ticks per slot `[batch]`, each in `1..time`.

        Returns:
          Forecasts `[time, batch, 2]` float32; entries at `t >= counts[b]` are meaningless.
          Equal to `counts[b]` successive `step` calls for each slot.
        """
        xs = np.asarray(xs, np.float32)
        t = xs.shape[0]
        if t == 1:
            return self.step(slots, xs[0])[None]
        ps, _, n = self._pad(slots, np.zeros((len(slots), 1), np.float32))
        tb = bucket_steps(t)
        px = np.zeros((tb, len(ps), xs.shape[2]), np.float32)
        px[:t, :n] = xs
        pc = np.zeros(len(ps), np.int32)
        pc[:n] = counts
        self.hc, out = self._advance(self.flat, self.hc, ps, px, pc)
        return np.asarray(out)[:t, :n]

    def precompile(self, batch_sizes: Iterable[int], steps: Iterable[int] = (1, 4)) -> int:
        """Compile the step for these padded batch sizes and tick counts ahead of traffic
        (a first compile costs ~0.1-1 s, which would otherwise land on live ticks).
        Touches only the scratch slot. Returns how many shapes were prepared."""
        n = 0
        f = self.config.n_features
        for b in sorted({bucket(x, self.min_bucket) for x in batch_sizes}):
            slots = np.full(b, self.scratch, np.int32)
            for t in sorted(set(steps)):
                if t == 1:
                    self.hc, _ = self._step(self.flat, self.hc, slots, np.zeros((b, f), np.float32))
                else:
                    tb = bucket_steps(t)
                    xs = np.zeros((tb, b, f), np.float32)
                    self.hc, _ = self._advance(self.flat, self.hc, slots, xs, np.zeros(b, np.int32))
                n += 1
        return n

    def precompile_warm(self, batch_sizes: Iterable[int]) -> int:
        """Compile `warm` for these padded batch sizes (touches only the scratch slot)."""
        w, f = self.config.window, self.config.n_features
        sizes = sorted({bucket(x, self.min_bucket) for x in batch_sizes})
        for b in sizes:
            slots = np.full(b, self.scratch, np.int32)
            self.hc, _ = self._warm(self.flat, self.hc, slots, np.zeros((b, w, f), np.float32))
        return len(sizes)

    def states_of(self, slots: Iterable[int]) -> np.ndarray:
        """Copies of several slots' state `[n, 2, layers, units]` ((h, c) stacked)."""
        idx, n = self._indices(slots)
        return np.asarray(self.hc[idx])[:n]

    def set_states(self, slots: Iterable[int], hc: np.ndarray) -> None:
        """Restore several slots' state from `[n, 2, layers, units]` (a checkpoint)."""
        idx, n = self._indices(slots)
        rows = np.zeros((len(idx), *self.hc.shape[1:]), np.float32)
        rows[:n] = hc
        self.hc = self.hc.at[idx].set(jnp.asarray(rows))

    def warm(self, slots: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Start the given slots afresh from their last observations.

        Args:
          slots: distinct slot indices `[batch]`.
          windows: each slot's most recent feature rows `[batch, time, features]`, oldest first.

        Returns:
          The forecast after each window's last row `[batch, 2]`, as `step` returns it.
        """
        ps, pw, n = self._pad(slots, windows)
        self.hc, out = self._warm(self.flat, self.hc, ps, pw)
        return np.asarray(out)[:n]

    def _check(self, slot: int) -> int:
        if not 0 <= slot < self.n_slots:
            raise IndexError(f"slot {slot} out of range [0, {self.n_slots})")
        return int(slot)

    def _indices(self, slots: Iterable[int]) -> tuple[np.ndarray, int]:
        """Checked slot indices padded with the scratch slot to a bucket size, so that
        gathers and scatters of varying sizes compile once per bucket, not once per size."""
        idx = [self._check(int(s)) for s in slots]
        out = np.full(bucket(len(idx), 8), self.scratch, np.int32)
        out[: len(idx)] = idx
        return out, len(idx)

    def reset(self, slots: Iterable[int]) -> None:
        """Zero the state of the given slots (a symbol was evicted)."""
        idx, _ = self._indices(slots)
        self.hc = self.hc.at[idx].set(0.0)

    def state_of(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Copy of one slot's `(h, c)`, each `[layers, units]` (for checkpoints)."""
        hc = np.asarray(self.hc[self._check(slot)])
        return hc[0], hc[1]

    def set_state(self, slot: int, h: np.ndarray, c: np.ndarray) -> None:
        """Restore one slot's `(h, c)` from a checkpoint."""
        self.hc = self.hc.at[self._check(slot)].set(jnp.asarray(np.stack([h, c]), jnp.float32))

    def window_forecast(self, windows: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """The tutorial's way, statelessly: a fresh pass over each window `[n, time, features]`.

        Touches no slot. Returns the forecast after each window's last row `[n, 2]`.
        """
        outs = []
        for i in range(0, len(windows), chunk):
            part = np.asarray(windows[i : i + chunk], np.float32)
            n = len(part)
            b = bucket(n, self.min_bucket)
            pad = np.zeros((b, *part.shape[1:]), np.float32)
            pad[:n] = part
            outs.append(np.asarray(self._window(self.flat, pad))[:n])
        return np.concatenate(outs) if outs else np.zeros((0, 2), np.float32)
