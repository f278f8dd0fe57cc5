"""Where the time of `tickcast serve` goes at max rate: cProfile of a backlog drain.

Loads `--ticks` synthetic ticks of `--symbols` symbols into a fresh topic on a local broker,
then runs `tickcast serve` with `TICKCAST_PROFILE` (cProfile from the first fetch on, after
start-up and precompilation) until it has consumed them, stops it with SIGTERM and groups
its time by area (self time of the functions in each area). "Waiting"
is time the event loop sat in `epoll` with nothing to do: the broker (fetches and
transaction round trips) and the other processes on the machine.

    python bench/stream_profile.py [--symbols 1000] [--ticks 400000] [--at-least-once]
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.kafka.local import LocalBroker, free_port  # noqa: E402

AREAS = [  # (label, regex on "file:line(function)"), first match wins
    ("waiting in epoll (broker, other processes)", r"select\.epoll|method 'poll'"),
    ("XLA compile", r"compiler\.py|backend_compile|mlir"),
    ("device step + transfers (model/runtime.py, jax)",
     r"model/runtime\.py|numpy\.asarray|jax/|jaxlib"),
    ("aiokafka consumer (fetch, record decode)",
     r"aiokafka/(consumer|record|protocol|conn|client)"),
    ("aiokafka producer (batches, transactions)", r"aiokafka/producer"),
    ("tick decode + validation (streamer/core/ticks.py)", r"streamer/core/ticks\.py|orjson\.loads"),
    ("forecast payloads (streamer/feed/hub.py)", r"streamer/core/forecasts\.py|orjson\.dumps"),
    ("engine host work (streamer/core/engine.py, features, numpy)",
     r"streamer/core/|model/features\.py|numpy"),
    ("serve loop + metrics (streamer/serve/, prometheus)",
     r"streamer/serve/|prometheus_client"),
    ("asyncio + other", r"."),
]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--symbols", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=400_000)
    ap.add_argument("--at-least-once", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        broker = LocalBroker(Path(d) / "kafka", port=free_port())
        broker.start()
        try:
            env = dict(os.environ, TICKCAST_KAFKA_BOOTSTRAP=broker.bootstrap, JAX_PLATFORMS="cpu",
                       TICKCAST_LOG_LEVEL="WARNING",
                       TICKCAST_EXACTLY_ONCE="false" if args.at_least_once else "true")  # fmt: skip
            subprocess.run(
                [sys.executable, "-m", "streamer.cli", "replay", "--synthetic", str(args.symbols),
                 "--ticks-per-symbol", str(args.ticks // args.symbols), "--quiet"],
                cwd=ROOT, env=env, check=True,
            )  # fmt: skip
            port = free_port()
            prof = Path(d) / "serve.prof"
            serve = subprocess.Popen(
                [sys.executable, "-m", "streamer.cli", "serve", "--metrics-port", str(port)],
                cwd=ROOT, env={**env, "TICKCAST_PROFILE": str(prof)},
            )  # fmt: skip
            t0 = None
            while True:
                time.sleep(0.2)
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                        text = r.read().decode()
                except OSError:
                    continue
                m = re.search(r"^tickcast_ticks_consumed_total ([0-9.e+]+)$", text, re.M)
                n = float(m.group(1)) if m else 0.0
                if n > 0 and t0 is None:
                    t0 = time.monotonic()
                if n >= args.ticks:
                    break
            drain = time.monotonic() - (t0 or time.monotonic())
            serve.send_signal(signal.SIGTERM)
            serve.wait(60)
            stats = pstats.Stats(str(prof))
        finally:
            broker.stop()
    totals: dict[str, float] = {label: 0.0 for label, _ in AREAS}
    raw = stats.stats  # type: ignore[attr-defined]
    for (file, line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        key = f"{file}:{line}({func})"
        for label, pattern in AREAS:
            if re.search(pattern, key):
                totals[label] += tt
                break
    whole = sum(totals.values())
    mode = "at-least-once" if args.at_least_once else "exactly-once"
    print(
        f"serve ({mode}), {args.ticks:,} ticks of {args.symbols:,} symbols, drained in "
        f"{drain:.1f} s after the first batch; profiled time {whole:.1f} s"
    )
    print("| area | seconds | share | µs per tick |")
    print("|---|---:|---:|---:|")
    for label, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {t:.2f} | {t / whole:.0%} | {t / args.ticks * 1e6:.2f} |")
    print("\nlargest self times:")
    stats.sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
