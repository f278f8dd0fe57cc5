"""What a model hot swap costs the stream, by number of live symbols.

For S symbols, each with a full buffer, an engine serves micro-batches of one tick per
symbol. A swap to a model of the same config runs as `tickcast serve` runs it:

* round 1 (worker thread, the stream keeps flowing): new runtime, every symbol warmed from
  its buffer, kernels compiled;
* round 2 (worker thread): catch up the `LAG` micro-batches that went by meanwhile;
* final round (between two micro-batches, what ticks wait for): catch up the one batch
  since round 2, then switch.

Printed: the micro-batch time (median of 20), each round's time, and the final round's
pause as a multiple of one micro-batch. Everything in one process on this machine's CPU,
compiled kernels warm (each measurement repeated; the best of 3 rounds is shown for the
background rounds, the median of 5 swaps for the pause).

    python bench/swap_bench.py [--symbols 100,1000,10000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from model import checkpoint  # noqa: E402
from model.checkpoint import LoadedModel  # noqa: E402
from model.lstm import LSTMForecaster, load_params_into  # noqa: E402
from model.runtime import configure_jax  # noqa: E402
from streamer.core.engine import Engine  # noqa: E402
from streamer.core.ticks import Decoded  # noqa: E402

LAG = 5  # micro-batches that pass while round 1 runs (it takes longer at scale)


def other_model(pred: LoadedModel, seed: int) -> LoadedModel:
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda a: np.asarray(a) * 1.05 + 0.02 * rng.standard_normal(np.shape(a)), pred.params
    )
    model = LSTMForecaster(pred.config, rngs=nnx.Rngs(0))
    load_params_into(model, params)
    return LoadedModel(model, pred.config, pred.stats, {**pred.metadata, "version": f"v{seed}"})


class Feed:
    """One tick per symbol per micro-batch, random-walk prices."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.names = [f"S{i:05d}" for i in range(n)]
        self.logp = np.log(np.random.default_rng(0).uniform(20, 200, n))
        self.t = 1_700_000_000_000
        self.off = 0

    def batch(self) -> tuple[Decoded, np.ndarray, np.ndarray]:
        self.logp += np.random.default_rng(self.t).normal(0, 1e-3, self.n)
        self.t += 1000
        d = Decoded(
            list(self.names),
            np.full(self.n, self.t, np.int64),
            np.exp(self.logp),
            np.full(self.n, 100.0),
            np.arange(self.n, dtype=np.int64),
        )
        off = self.off + np.arange(self.n, dtype=np.int64)
        self.off += self.n
        return d, np.zeros(self.n, np.int32), off


def measure(pred: LoadedModel, n: int) -> dict[str, Any]:
    engine = Engine(pred, max_symbols=max(n, 8))
    engine.precompile()
    feed = Feed(n)
    for _ in range(2 * pred.config.window):  # full buffers
        engine.apply(*feed.batch())
    batch = []
    for _ in range(20):
        t0 = time.perf_counter()
        engine.apply(*feed.batch())
        batch.append(time.perf_counter() - t0)
    r1, r2, pause = [], [], []
    for k in range(5):
        new = other_model(pred, k + 1)
        t0 = time.perf_counter()
        pending = engine.prepare_swap(new, engine.snapshot())
        r1.append(time.perf_counter() - t0)
        for _ in range(LAG):
            engine.apply(*feed.batch())
        t0 = time.perf_counter()
        pending.catch_up(engine.snapshot())
        r2.append(time.perf_counter() - t0)
        engine.apply(*feed.batch())
        t0 = time.perf_counter()
        engine.finish_swap(pending)
        pause.append(time.perf_counter() - t0)
        engine.apply(*feed.batch())
    b = float(np.median(batch))
    p = float(np.median(pause))
    return {
        "symbols": n,
        "batch_ms": b * 1000,
        "round1_ms": min(r1[1:]) * 1000,  # the first includes compiling warm for this size
        "round1_first_ms": r1[0] * 1000,
        "round2_ms": min(r2) * 1000,
        "pause_ms": p * 1000,
        "pause_per_batch": p / b,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--symbols", default="100,1000,10000")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    configure_jax(compile_cache=True)
    pred = checkpoint.load(ROOT / "model" / "bundled" / "stocks")
    rows = [measure(pred, int(s)) for s in args.symbols.split(",")]
    cfg = pred.config
    print(f"\nhot swap, bundled stocks model ({cfg.layers}x{cfg.units}), {platform.machine()} "
          f"CPU x{os.cpu_count()}, LAG={LAG} batches during round 1\n")  # fmt: skip
    head = ("symbols", "batch ms", "round 1 ms (first)", "round 2 ms", "final ms", "final/batch")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        print(f"{r['symbols']:,} | {r['batch_ms']:.2f} | {r['round1_ms']:.0f} "
              f"({r['round1_first_ms']:.0f}) | {r['round2_ms']:.1f} | {r['pause_ms']:.2f} | "
              f"{r['pause_per_batch']:.2f}")  # fmt: skip
    if args.json:
        meta = {"machine": platform.platform(), "cpus": os.cpu_count()}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
