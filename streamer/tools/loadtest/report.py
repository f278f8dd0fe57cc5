"""The load test's report: build it from the workers' results, format it, plot it, write
it as JSON, and the server-side latency breakdown scraped from `/metrics`.

May import `accounting`, numpy, matplotlib (lazily) and prometheus_client's text parser;
no sockets apart from the one `/metrics` scrape, no asyncio.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from streamer.tools.loadtest.accounting import Plan, step_stats, sustained

__all__ = [
    "BREAKDOWN",
    "breakdown",
    "build_report",
    "format_report",
    "plot",
    "quantile_between",
    "scrape_histograms",
    "write_json",
]


# Server-side histograms the report breaks latency down with (when --metrics is given).
BREAKDOWN = {
    "tickcast_tick_to_forecast_seconds": "tick produced -> forecast committed",
    "tickcast_batch_seconds": "micro-batch compute (decode, step, encode)",
    "tickcast_step_seconds": "device step per micro-batch",
    "tickcast_feed_send_seconds": "forecast in hub -> frame written to the socket",
}


def scrape_histograms(url: str) -> dict[str, list[tuple[float, float]]]:
    """Cumulative `(le, count)` buckets of every histogram at a Prometheus endpoint."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[float, float]]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.type != "histogram":
            continue
        for smp in fam.samples:
            if smp.name.endswith("_bucket"):
                out.setdefault(fam.name, []).append((float(smp.labels["le"]), smp.value))
    return out


def quantile_between(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float | None:
    """The q-quantile of what a histogram observed between two scrapes (linear within a
    bucket, as Prometheus' histogram_quantile); None if it observed nothing."""
    b = dict(before)
    rows = sorted((le, n - b.get(le, 0.0)) for le, n in after)
    total = rows[-1][1] if rows else 0.0
    if total <= 0:
        return None
    rank, lo, prev = q * total, 0.0, 0.0
    for le, n in rows:
        if n >= rank:
            if math.isinf(le):
                return lo
            return lo + (le - lo) * (rank - prev) / max(n - prev, 1e-12)
        lo, prev = le, n
    return lo


def breakdown(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Server-side p50/p99 (ms) of each `BREAKDOWN` histogram over the run."""
    out = {}
    for name, what in BREAKDOWN.items():
        if name in after:
            p50 = quantile_between(before.get(name, []), after[name], 0.5)
            p99 = quantile_between(before.get(name, []), after[name], 0.99)
            out[name] = {"what": what, "p50_ms": None if p50 is None else p50 * 1000,
                         "p99_ms": None if p99 is None else p99 * 1000}  # fmt: skip
    return out


def build_report(plan: Plan, made: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """The report: whole-run and per-step figures, and the arrays for the plots."""
    tick = np.concatenate([r["tick_ms"] for r in results] or [np.zeros(0)])
    lat = np.concatenate([r["lat_ms"] for r in results] or [np.zeros(0, np.float32)])
    t0 = made["scored_from_ms"]
    scored = tick >= t0
    n_steps = len(plan.rates)
    conf_ms = np.concatenate([r["conf_ms"] for r in results] or [np.zeros(0)])
    conf_n = np.concatenate([r["conf_n"] for r in results] or [np.zeros(0, np.int64)])
    steps = step_stats(tick[scored], lat[scored], t0, plan.step_s, n_steps, conf_ms, conf_n)
    per_sec = made["per_second"]
    w = int(plan.warmup_s)
    lost = sum(r["lost"] for r in results)
    for k, s in enumerate(steps):
        secs = per_sec[w + int(k * plan.step_s) : w + int((k + 1) * plan.step_s)]
        s["target_per_s"] = plan.rates[k]
        s["ticks_per_s"] = sum(secs) / plan.step_s
    sl = lat[scored]
    scored_s = plan.step_s * n_steps
    report: dict[str, Any] = {
        "plan": {k: v for k, v in asdict(plan).items() if k != "token"},
        "ticks_sent": made["total"],
        "ticks_per_s": sum(per_sec[w:]) / scored_s if scored_s else 0.0,
        "deliveries_per_s": len(sl) / scored_s if scored_s else 0.0,
        "latency_ms": {
            "p50": float(np.percentile(sl, 50)) if len(sl) else None,
            "p99": float(np.percentile(sl, 99)) if len(sl) else None,
            "max": float(sl.max()) if len(sl) else None,
        },
        "delivered": int(sum(r["delivered"] for r in results)),
        "conflated": int(sum(r["conflated"] for r in results)),
        "lost": int(lost),
        "seq_gaps": int(sum(r["seq_gaps"] for r in results)),
        "errors": int(sum(r["n_errors"] for r in results)),
        "error_samples": [e for r in results for e in r["errors"]][:10],
        "steps": steps,
        "sustained_per_s": sustained(steps, plan.slo_ms),
    }
    report["_arrays"] = {"tick_ms": tick, "lat_ms": lat, "per_second": per_sec, "t0_ms": t0}
    return report


def plot(report: dict[str, Any], folder: str | Path) -> list[str]:
    """latency.png (p50/p99 per second over time), histogram.png, throughput.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = report["_arrays"]
    tick, lat = a["tick_ms"], a["lat_ms"]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    start = tick.min() if len(tick) else 0.0
    sec = ((tick - start) // 1000).astype(np.int64) if len(tick) else np.zeros(0, np.int64)
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4))
    if len(sec):
        xs = np.unique(sec)
        for q, style in ((50, "-"), (99, "--")):
            ys = [np.percentile(lat[sec == x], q) for x in xs]
            ax.plot(xs, ys, style, label=f"p{q}")
        ax.axhline(report["plan"]["slo_ms"], color="red", lw=0.8, label="SLO")
    ax.set(xlabel="s (tick produce time)", ylabel="tick → client ms", title="Latency over time")
    ax.legend()
    fig.tight_layout()
    paths.append(str(out / "latency.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    if len(lat):
        edges = np.logspace(np.log10(max(float(lat.min()), 0.1)), np.log10(lat.max() + 1), 60)
        ax.hist(lat, bins=list(edges))
        ax.set_xscale("log")
    ax.set(xlabel="tick → client ms", ylabel="deliveries", title="Latency histogram")
    fig.tight_layout()
    paths.append(str(out / "histogram.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(np.arange(len(a["per_second"])), a["per_second"], label="ticks produced/s")
    if len(sec):
        ax.plot(*np.unique(sec, return_counts=True), label="deliveries/s")
    ax.set(xlabel="s", ylabel="per second", title="Throughput")
    ax.legend()
    fig.tight_layout()
    paths.append(str(out / "throughput.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def format_report(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    lines = [
        f"ticks sent {r['ticks_sent']:,} ({r['ticks_per_s']:,.0f}/s scored), deliveries "
        f"{r['deliveries_per_s']:,.0f}/s, latency p50 {_ms(lat['p50'])} p99 {_ms(lat['p99'])} "
        f"max {_ms(lat['max'])}",
        f"conflated {r['conflated']:,}, lost {r['lost']:,}, errors {r['errors']:,}",
        "",
        "target/s | ticks/s | deliveries/s | p50 ms | p99 ms | max ms | conflated",
        "---|---|---|---|---|---|---",
    ]
    for s in r["steps"]:
        lines.append(f"{s['target_per_s']:,.0f} | {s['ticks_per_s']:,.0f} | "
                     f"{s['deliveries_per_s']:,.0f} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | "
                     f"{_ms(s['max_ms'])} | {s['conflated']:,}")  # fmt: skip
    if r.get("server"):
        lines += ["", "server side (its Prometheus histograms over the run) | p50 ms | p99 ms",
                  "---|---|---"]  # fmt: skip
        for v in r["server"].values():
            lines.append(f"{v['what']} | {_ms(v['p50_ms'])} | {_ms(v['p99_ms'])}")
    best = r["sustained_per_s"]
    slo = r["plan"]["slo_ms"]
    lines.append("")
    lines.append(f"sustained with p99 < {slo:.0f} ms, nothing conflated: "
                 + (f"{best:,.0f} ticks/s" if best else "none of the rates"))  # fmt: skip
    return "\n".join(lines)


def _ms(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def write_json(report: dict[str, Any], path: str) -> None:
    clean = {k: v for k, v in report.items() if k != "_arrays"}
    Path(path).write_text(json.dumps(clean, indent=1, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)
