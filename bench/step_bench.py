"""Per-tick cost of forecasting N symbols: tickcast's stateful step against the alternatives.

A *tick* is one new observation for one symbol that needs a fresh forecast. Each approach is
called once per tick of all N symbols, and its median wall time per call (`time.perf_counter`,
after warm-up, repeated for at least `--min-time` seconds and 3 calls, at most
`--max-seconds-per-cell`) is turned into ticks/s = N / seconds per call and µs per tick.

Rows of the table (every network is 4 x LSTM(50), window 60, input width F):
* tickcast step: `Runtime.step(slots, x [N, F])`: one LSTM step per symbol from the state
  kept on the device, host padding and transfers included (the production path).
* Keras predict (tutorial): `Sequential` of 4 LSTM(50) + Dropout(0.2) + Dense(1), JAX backend,
  `model.predict(windows [N, 60, F])` with its default batch size: the whole 60-step window of
  every symbol is re-encoded every tick. Keras call: `model(windows, training=False)`, which
  runs eagerly (not jitted) on the JAX backend.
* JAX window: `Runtime.window_forecast(windows)`: tickcast's own network re-run over the window.
* torch eager / torch.compile: `nn.LSTM(F, 50, num_layers=4)` + `nn.Linear(50, 2)` under
  `inference_mode`, one step `[1, N, F]` carrying `(h, c)` between calls (CUDA if torch sees
  a GPU, else CPU with `--torch-threads`, default 2; OpenMP threads suffer badly when another
  process holds a core). torch.compile: default mode, `dynamic=False`, one graph per N.
* floor: FLOPs per tick / measured float32 GEMM rate: the ticks/s the matrix products alone
  would allow at the rate a large matmul reaches (it ignores the tanh's and memory traffic).

Ratio rows: tickcast ÷ tutorial (× faster than Keras predict), tickcast ÷ the best PyTorch
variant, and tickcast as % of the floor. A cell that could not be measured shows the reason.
The last line splits one tickcast call at N=1024: the jitted `_step` alone on device arrays,
the same with numpy arguments (host->device transfer), and the full `Runtime.step` (slot
checks, padding to a power of two, transfers, copying the forecasts out).

    python bench/step_bench.py [--quick] [--sizes 1,64,1024,16384] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.config import ModelConfig
from model.lstm import LSTMForecaster
from model.runtime import Runtime, bucket, configure_jax

Cell = dict[str, Any]
Maker = Callable[[int], Callable[[], object]]

CFG = ModelConfig(features=("ret",))
F, H, L, W = CFG.n_features, CFG.units, CFG.layers, CFG.window


def flops_per_tick() -> int:
    """Multiply-adds x 2 of one LSTM step for one symbol: gates of every layer, then the head."""
    layers = sum(2 * ((F if i == 0 else H) + H) * 4 * H for i in range(L))
    return layers + 2 * H * 2


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gemm_rate(n: int, reps: int = 7) -> float:
    """Best float32 FLOP/s of an n x n jnp matmul (default precision, as the model uses)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    return 2 * n**3 / min(timed(lambda: mm(a, b).block_until_ready()) for _ in range(reps))


def measure(fn: Callable[[], object], n: int, min_time: float, max_time: float) -> Cell:
    """Median seconds per call of `fn` (already warmed up) -> ticks/s and µs per tick."""
    times: list[float] = []
    while sum(times) < max_time and (sum(times) < min_time or len(times) < 3):
        times.append(timed(fn))
    sec = statistics.median(times)
    return {
        "sec_per_call": sec,
        "ticks_per_s": n / sec,
        "us_per_tick": 1e6 * sec / n,
        "calls": len(times),
    }


def warm_up(fn: Callable[[], object]) -> None:
    """First call compiles; if it was quick, a few more settle caches and allocators."""
    if timed(fn) < 0.5:
        for _ in range(3):
            fn()


def windows_for(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, W, F)).astype(np.float32)


def make_tickcast(params: Any) -> Maker:
    def make(n: int) -> Callable[[], object]:
        rt, slots = Runtime(params, CFG, n_slots=n), np.arange(n, dtype=np.int32)
        x = np.random.default_rng(n).standard_normal((n, F)).astype(np.float32)
        return lambda: rt.step(slots, x)

    return make


def make_window(params: Any) -> Maker:
    def make(n: int) -> Callable[[], object]:
        rt, win = Runtime(params, CFG, n_slots=1), windows_for(n)
        return lambda: rt.window_forecast(win)

    return make


def make_keras() -> tuple[Maker, Maker]:
    """The tutorial's model: `model.predict` per tick, and the direct call."""
    import keras  # the environment variable above selects the JAX backend

    model = keras.Sequential([keras.Input(shape=(W, F))])
    for i in range(L):
        model.add(keras.layers.LSTM(H, return_sequences=i < L - 1))
        model.add(keras.layers.Dropout(0.2))
    model.add(keras.layers.Dense(1))

    def predict(n: int) -> Callable[[], object]:
        win = windows_for(n)
        return lambda: model.predict(win, verbose=0)

    def call(n: int) -> Callable[[], object]:
        win = windows_for(n)
        return lambda: np.asarray(model(win, training=False))

    return predict, call


def make_torch(compiled: bool, threads: int) -> tuple[Maker, str]:
    import torch

    torch.set_num_threads(threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(F, H, num_layers=L, dropout=0.2).to(dev).eval()
    head = torch.nn.Linear(H, 2).to(dev).eval()

    def step(x: Any, h: Any, c: Any) -> tuple[Any, Any, Any]:
        y, (h, c) = lstm(x, (h, c))
        return head(y[0]), h, c

    fn = torch.compile(step, dynamic=False) if compiled else step
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def make(n: int) -> Callable[[], object]:
        x = torch.randn(1, n, F, device=dev)
        state = [torch.zeros(L, n, H, device=dev), torch.zeros(L, n, H, device=dev)]

        def call() -> object:
            with torch.inference_mode():
                out, state[0], state[1] = fn(x, state[0], state[1])
                sync()
            return out

        return call

    return make, f"torch {torch.__version__} on {dev.type}, {threads} threads"


def where_time_goes(params: Any, n: int, min_time: float, max_time: float) -> dict[str, float]:
    """µs per call at batch n: jitted `_step` on device arrays, same with numpy args, full step."""
    b = bucket(n)
    rt = Runtime(params, CFG, n_slots=n)
    slots_np = np.arange(b, dtype=np.int32)
    slots_np[n:] = rt.scratch
    x_np = np.zeros((b, F), np.float32)
    slots_d, x_d = jax.device_put(slots_np), jax.device_put(x_np)
    st = [rt.hc]

    def pure(slots: Any, x: Any) -> Callable[[], object]:
        def call() -> object:
            st[0], out = rt._step(rt.flat, st[0], slots, x)
            return out.block_until_ready()

        return call

    res: dict[str, float] = {}
    for name, fn in (
        ("jit_step_device_args", pure(slots_d, x_d)),
        ("jit_step_numpy_args", pure(slots_np, x_np)),
        ("runtime_step", make_tickcast(params)(n)),
    ):
        warm_up(fn)
        res[name] = 1e6 * measure(fn, n, min_time, max_time)["sec_per_call"]
    return res


def si(v: float) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


def dur(sec: float) -> str:
    for mul, unit in ((1e6, "µs"), (1e3, "ms")):
        if sec * mul < 1000:
            return f"{sec * mul:.3g} {unit}"
    return f"{sec:.3g} s"


def fmt(cell: Cell) -> str:
    if "error" in cell:
        return f"n/a: {cell['error']}"
    return f"{si(cell['ticks_per_s'])}/s · {dur(cell['us_per_tick'] / 1e6)}"


def machine() -> dict[str, str]:
    cpu = platform.processor()
    if not cpu and Path("/proc/cpuinfo").exists():
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
    try:
        import torch
    except ImportError:
        torch = None
    tv = torch.__version__ if torch else "not installed"
    return {
        "cpu": cpu or platform.machine(),
        "nproc": str(len(os.sched_getaffinity(0))),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "torch": tv,
        "jax_devices": ", ".join(str(d) for d in jax.devices()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    configure_jax()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="sizes 1,64 and short timings")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 1,64,1024,16384)")
    ap.add_argument("--json", default=None, help="also write the results as JSON to this path")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per cell (0.5)")
    ap.add_argument("--max-seconds-per-cell", type=float, default=None, help="cap (30)")
    ap.add_argument("--torch-threads", type=int, default=2)
    a = ap.parse_args(argv)
    sizes = [int(s) for s in (a.sizes or ("1,64" if a.quick else "1,64,1024,16384")).split(",")]
    min_t = a.min_time if a.min_time is not None else (0.1 if a.quick else 0.5)
    max_t = a.max_seconds_per_cell or (5.0 if a.quick else 30.0)

    info = machine()
    print("## tickcast per-tick benchmark\n")
    print(" · ".join(f"{k}: {v}" for k, v in info.items()))
    on_cpu = jax.devices()[0].platform == "cpu"
    g = gemm_rate(2048 if on_cpu else 8192)
    fpt = flops_per_tick()
    floor = g / fpt
    print(
        f"float32 GEMM ({2048 if on_cpu else 8192}², jnp.matmul): {g / 1e9:.1f} GFLOP/s · "
        f"FLOPs per tick = Σ_layers 2·(in+{H})·4·{H} + 2·{H}·2 = {fpt:,} (F={F}) · "
        f"floor {si(floor)} ticks/s\n",
        flush=True,
    )

    params = LSTMForecaster(CFG, rngs=nnx.Rngs(0)).params()
    rows: dict[str, Maker | str] = {"tickcast step": make_tickcast(params)}
    try:
        rows["Keras predict (tutorial)"], rows["Keras call"] = make_keras()
    except ImportError as e:
        rows["Keras predict (tutorial)"] = rows["Keras call"] = f"keras missing ({e.name})"
    rows["JAX window (tickcast)"] = make_window(params)
    for label, compiled in (("torch eager", False), ("torch.compile", True)):
        try:
            rows[label], desc = make_torch(compiled, a.torch_threads)
            print(f"{label}: {desc}")
        except ImportError as e:
            rows[label] = f"torch not importable ({e.name})"

    results: dict[str, dict[int, Cell]] = {}
    for label, maker in rows.items():
        results[label] = {}
        for n in sizes:
            if isinstance(maker, str):
                results[label][n] = {"error": maker}
                continue
            try:
                fn = maker(n)
                warm_up(fn)
                results[label][n] = measure(fn, n, min_t, max_t)
            except Exception as e:  # report, e.g. a failed torch.compile, and go on
                msg = (str(e).strip().splitlines() or [""])[0]
                results[label][n] = {"error": f"{type(e).__name__}: {msg}"[:80]}
            print(f"  {label:26s} N={n:<6d} {fmt(results[label][n])}", flush=True)

    def tps(label: str, n: int) -> float | None:
        return results[label][n].get("ticks_per_s")

    ratios: dict[str, dict[int, float | None]] = {"tutorial": {}, "torch": {}, "floor": {}}
    for n in sizes:
        t = tps("tickcast step", n)
        k = tps("Keras predict (tutorial)", n)
        best = max((v for v in (tps("torch eager", n), tps("torch.compile", n)) if v), default=None)
        ratios["tutorial"][n] = t / k if t and k else None
        ratios["torch"][n] = t / best if t and best else None
        ratios["floor"][n] = 100 * t / floor if t else None

    def row(label: str, cells: list[str]) -> None:
        print(f"| {label} | " + " | ".join(cells) + " |")

    print()
    row("approach (ticks/s · time per tick)", [f"N={n}" for n in sizes])
    print("|---|" + "---:|" * len(sizes))
    for label in results:
        row(label, [fmt(results[label][n]) for n in sizes])
    row("floor (GEMM rate / FLOPs per tick)", [f"{si(floor)}/s · {dur(1 / floor)}"] * len(sizes))
    for key, label, suf in (
        ("tutorial", "**tickcast ÷ tutorial**", "×"),
        ("torch", "tickcast ÷ best PyTorch", "×"),
        ("floor", "tickcast % of floor", "%"),
    ):
        row(
            label,
            [
                "n/a"
                if (v := ratios[key][n]) is None
                else f"{v:.3g}{suf}"
                if v < 1000
                else f"{v:,.0f}{suf}"
                for n in sizes
            ],
        )

    n_wt = 1024 if 1024 in sizes else max(sizes)
    wt = where_time_goes(params, n_wt, min_t, max_t)
    print(
        f"\nwhere the time goes (tickcast, N={n_wt}, µs per call): jitted `_step` on device "
        f"arrays {wt['jit_step_device_args']:.1f} · with numpy args (transfer) "
        f"{wt['jit_step_numpy_args']:.1f} · full `Runtime.step` (validate, pad, transfer, "
        f"copy out) {wt['runtime_step']:.1f} → host overhead "
        f"{wt['runtime_step'] - wt['jit_step_device_args']:.1f} µs "
        f"({100 * (1 - wt['jit_step_device_args'] / wt['runtime_step']):.0f}% of the call)"
    )

    report = {
        "machine": info,
        "gemm_flops_per_s": g,
        "flops_per_tick": fpt,
        "floor_ticks_per_s": floor,
        "sizes": sizes,
        "min_time": min_t,
        "max_time": max_t,
        "results": {k: {str(n): c for n, c in v.items()} for k, v in results.items()},
        "ratios": {k: {str(n): x for n, x in v.items()} for k, v in ratios.items()},
        "where_time_goes_us": {"n": n_wt, **wt},
    }
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
