"""The load test's pure half: the plan, the per-client accounting and the step figures.

No sockets, no asyncio, no Kafka: tested by plain calls. May import numpy and the standard
library only (`runner` and `report` import it, never the reverse).

Accounting, per client and symbol (symbol names carry a per-run tag, so the engine's
per-symbol `seq` counts exactly this run's ticks): after the stream drains, a client that
follows symbol s should have seen every forecast of s after its snapshot (or from seq 1
when s had no forecast yet at subscription), except those the server reported conflated.
What is neither seen nor reported is `lost`. A gap in a connection's own message `seq`
also counts as lost.
"""

from __future__ import annotations

import math
import random
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ClientBook",
    "Plan",
    "parse_ramp",
    "step_stats",
    "sustained",
    "target_ticks",
]


# ------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    """What to drive. Rates in ticks/s, times in seconds."""

    bootstrap: str = "127.0.0.1:9092"
    ticks_topic: str = "ticks"
    feed_url: str = "ws://127.0.0.1:8765/ws"
    token: str | None = None
    symbols: int = 100
    rates: tuple[float, ...] = (1000.0,)  # one per step; a ramp has several
    step_s: float = 10.0
    warmup_s: float = 2.0  # produced at the first rate, not scored
    clients: int = 10
    per_client: int = 10  # symbols each client follows; 0: all ("*")
    procs: int = 1  # client worker processes
    drain_s: float = 10.0  # after the last tick: wait this long at most for its forecasts
    max_ticks: int = 5_000_000
    slo_ms: float = 50.0
    metrics_url: str | None = None  # the server's /metrics: a server-side latency breakdown
    seed: int = 0
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        if self.symbols < 1 or self.clients < 0 or self.procs < 1:
            raise ValueError("symbols and procs must be >= 1, clients >= 0")
        if not self.rates or min(self.rates) <= 0:
            raise ValueError("rates must be > 0")
        if self.per_client < 0 or self.per_client > self.symbols:
            raise ValueError(f"per_client must be in 0..{self.symbols} (0: every symbol)")
        if self.step_s <= 0 or self.warmup_s < 0 or self.drain_s < 0:
            raise ValueError("step_s must be > 0, warmup_s and drain_s >= 0")

    @property
    def names(self) -> list[str]:
        return [f"LT{self.tag}-{i:05d}" for i in range(self.symbols)]

    @property
    def seconds(self) -> float:
        return self.warmup_s + self.step_s * len(self.rates)

    def subscriptions(self) -> list[list[str] | str]:
        """Each client's symbols (seeded), or "*" for all."""
        rng = random.Random(self.seed)
        names = self.names
        if self.per_client == 0:
            return ["*"] * self.clients
        return [rng.sample(names, self.per_client) for _ in range(self.clients)]


def parse_ramp(text: str) -> tuple[float, ...]:
    """`START:STOP:STEP` (ticks/s, inclusive) -> the rates of a ramp."""
    try:
        a, b, s = (float(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--ramp wants START:STOP:STEP, got {text!r}") from None
    if a <= 0 or b < a or s <= 0:
        raise ValueError("--ramp needs 0 < START <= STOP and STEP > 0")
    return tuple(float(r) for r in np.arange(a, b + s / 2, s))


def target_ticks(plan: Plan, el: float) -> float:
    """Ticks that should have been sent `el` seconds in (the integral of the rate)."""
    r0 = plan.rates[0]
    if el <= plan.warmup_s:
        return r0 * el
    n = r0 * plan.warmup_s
    t = el - plan.warmup_s
    for r in plan.rates:
        dt = min(t, plan.step_s)
        n += r * dt
        t -= dt
        if t <= 0:
            break
    return n


# ------------------------------------------------------------------------- accounting
class ClientBook:
    """One connection's view: message seq continuity, per-symbol forecast seq, latencies.

    Latency samples are `(tick_time ms, latency ms)`; only `update` forecasts are timed
    (a snapshot is state, not a delivery)."""

    def __init__(self) -> None:
        self.seq = 0
        self.seq_gaps = 0
        self.first: dict[str, int] = {}  # symbol -> seq of the first forecast seen
        self.last: dict[str, int] = {}
        self.seen: dict[str, int] = {}  # forecasts seen after the first
        self.delivered = 0
        self.conflated = 0
        self.errors: list[str] = []
        # array.array, not lists: millions of samples as Python floats make the garbage
        # collector's full passes long enough to show up in the latencies measured.
        self.tick_ms = array("d")
        self.lat_ms = array("f")
        self.conf_ms: list[float] = []  # tick time of each update that reported conflation
        self.conf_n: list[int] = []

    def on_message(self, m: dict[str, Any], now_ms: float) -> None:
        s = m.get("seq")
        if isinstance(s, int):
            if self.seq and s != self.seq + 1:
                self.seq_gaps += s - self.seq - 1 if s > self.seq else 1
            self.seq = s
        kind = m.get("type")
        if kind == "update":
            c = int(m.get("conflated", 0))
            if c:
                self.conflated += c
                self.conf_ms.append(m["forecasts"][0]["tick_time"] if m["forecasts"] else now_ms)
                self.conf_n.append(c)
            for f in m["forecasts"]:
                self._forecast(f, snapshot=False)
                self.delivered += 1
                self.tick_ms.append(f["tick_time"])
                self.lat_ms.append(now_ms - f["tick_time"])
        elif kind == "snapshot" and m.get("forecast"):
            self._forecast(m["forecast"], snapshot=True)
        elif kind == "error":
            self.errors.append(f"{m.get('code')}: {m.get('message')}")

    def _forecast(self, f: dict[str, Any], snapshot: bool) -> None:
        """A symbol first met in a snapshot is owed from the snapshot's seq on; one first
        met in an update had no forecast when subscribed (the feed sends a snapshot of
        every symbol that has one), so it is owed from its first forecast, seq 1."""
        sym, q = f["symbol"], int(f["seq"])
        if sym not in self.first:
            self.first[sym] = q if snapshot else 0
            self.seen[sym] = 0 if snapshot else 1
        elif q > self.last[sym]:
            self.seen[sym] += 1
        self.last[sym] = max(q, self.last.get(sym, q))

    def caught_up(self, final: dict[str, int], follows: list[str] | str) -> bool:
        """Has the last forecast of every followed symbol arrived?"""
        syms = list(final) if follows == "*" else follows
        return all(self.last.get(s, 0) >= final.get(s, 0) for s in syms)

    def lost(self, final: dict[str, int], follows: list[str] | str) -> int:
        """Forecasts of followed symbols neither seen nor reported conflated, plus gaps."""
        syms = list(final) if follows == "*" else follows
        missing = 0
        for s in syms:
            n = final.get(s, 0)
            if s in self.first:  # seen from `first` on: everything after it is owed
                missing += max(0, n - self.first[s] - self.seen[s])
            else:  # never seen: every forecast of the run was owed
                missing += n
        return max(0, missing - self.conflated) + self.seq_gaps


def step_stats(
    tick_ms: np.ndarray,
    lat_ms: np.ndarray,
    t0_ms: float,
    step_s: float,
    n_steps: int,
    conf_ms: np.ndarray | None = None,
    conf_n: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Latency percentiles, deliveries/s and conflated forecasts per step, by the tick's
    produce time.

    Args:
      tick_ms, lat_ms: per delivery `[n]`: its tick's produce time and its latency (ms).
      t0_ms: when the first scored step began (epoch ms).
      conf_ms, conf_n: per conflation report `[m]`: its tick time and how many.
    """
    idx = np.floor((tick_ms - t0_ms) / (step_s * 1000)).astype(np.int64)
    cidx = (np.floor((conf_ms - t0_ms) / (step_s * 1000)).astype(np.int64)
            if conf_ms is not None else np.zeros(0, np.int64))  # fmt: skip
    cn = conf_n if conf_n is not None else np.zeros(0, np.int64)
    out = []
    for k in range(n_steps):
        lat = lat_ms[idx == k]
        pct = np.percentile(lat, [50, 99]) if len(lat) else (math.nan, math.nan)
        out.append({
            "deliveries_per_s": len(lat) / step_s,
            "p50_ms": float(pct[0]), "p99_ms": float(pct[1]),
            "max_ms": float(lat.max()) if len(lat) else math.nan,
            "conflated": int(cn[cidx == k].sum()),
        })  # fmt: skip
    return out


def sustained(steps: list[dict[str, Any]], slo_ms: float) -> float | None:
    """The highest target rate held: p99 under the SLO, >= 95% of the target produced and
    nothing conflated at that step (None if no step held). Every step is in the report, so
    a lower step that failed (a hiccup) is visible beside it. Lost forecasts are counted
    per run (by symbol, not by step) and reported separately."""
    held = [
        s["target_per_s"]
        for s in steps
        if s["p99_ms"] < slo_ms
        and s["ticks_per_s"] >= 0.95 * s["target_per_s"]
        and s.get("conflated", 0) == 0
    ]
    return max(held) if held else None
