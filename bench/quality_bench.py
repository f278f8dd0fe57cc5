"""Cost of live scoring per forecast: `model.quality.Scorer.update` now against an older
commit's, side by side in one run.

`tickcast serve` scores every micro-batch's forecasts (the live error ratio, coverage and
interval score: streamer/quality.py), on the event loop, between the engine's step and the
transaction. This bench times one `update` of a batch holding one tick of each of N
symbols (a random walk per symbol, prices from 1e-8 to 1e9), after 70 warm-up batches so
every forecast is scored. The old and the new `Scorer` alternate call by call; each cell
is the median of `--repeats` calls (`time.perf_counter`). The old one is `model/quality.py`
as committed at `--old` (default: the scalar loop, before vectorising), read with
`git show`.

    python bench/quality_bench.py [--old REF] [--sizes 1,100,1000,10000] [--repeats 30]
        [--one-symbol]   # batches of N ticks of one symbol (a trade stream's burst)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import quality  # noqa: E402

OLD_DEFAULT = "84ef779"  # model/quality.py with the per-forecast Python loop


def old_module(ref: str) -> types.ModuleType:
    """`model/quality.py` as committed at `ref`, as a module."""
    src = subprocess.run(["git", "show", f"{ref}:model/quality.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    mod = types.ModuleType("old_quality")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up there
    exec(compile(src, f"{ref}:model/quality.py", "exec"), mod.__dict__)
    return mod


def batches(
    n: int, count: int, rng: np.random.Generator, one_symbol: bool = False
) -> list[tuple[Any, ...]]:
    """`count` batches of one tick of each of `n` symbols, or (`one_symbol`) of `n` ticks
    of one symbol (a trade stream's burst)."""
    symbols = ["S0"] * n if one_symbol else [f"S{i}" for i in range(n)]
    level = np.full(n, 123.0) if one_symbol else 10.0 ** rng.uniform(-8, 9, n)
    out = []
    for _ in range(count):
        if one_symbol:
            level = level[-1] * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
        else:
            level = level * np.exp(rng.normal(0, 0.01, n))
        point = level * np.exp(rng.normal(0, 0.002, n))
        out.append((symbols, level.copy(), point, point * 0.98, point * 1.02, "v1",
                    np.zeros(n, bool)))  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default=OLD_DEFAULT, help="git ref of the old model/quality.py")
    ap.add_argument("--sizes", default="1,100,1000,10000")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--one-symbol", action="store_true",
                    help="batches of N ticks of one symbol, not 1 tick of N symbols")  # fmt: skip
    a = ap.parse_args()
    old = old_module(a.old)
    rng = np.random.default_rng(0)
    print(f"# {platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"numpy {np.__version__}; old = {a.old}, new = working tree")  # fmt: skip
    first = "ticks of 1" if a.one_symbol else "symbols"
    print(f"{first:>8} {'old µs/call':>12} {'new µs/call':>12} {'old µs/fc':>10} "
          f"{'new µs/fc':>10} {'new/old':>8}")  # fmt: skip
    for n in (int(x) for x in a.sizes.split(",")):
        data = batches(n, 70 + a.repeats, rng, a.one_symbol)
        scorers = {"old": old.Scorer(60), "new": quality.Scorer(60)}
        times: dict[str, list[float]] = {"old": [], "new": []}
        for k, b in enumerate(data):
            for name in ("old", "new") if k % 2 else ("new", "old"):  # alternate the order
                t0 = time.perf_counter()
                res = scorers[name].update(*b)
                dt = time.perf_counter() - t0
                if k >= 70:
                    assert len(res) == n or a.one_symbol
                    times[name].append(dt)
        o, w = (statistics.median(times[x]) * 1e6 for x in ("old", "new"))
        print(f"{n:>8} {o:>12.1f} {w:>12.1f} {o / n:>10.2f} {w / n:>10.2f} {w / o:>8.2f}")


if __name__ == "__main__":
    main()
