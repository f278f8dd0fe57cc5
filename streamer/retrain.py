"""`tickcast retrain` and `tickcast models`: the Kafka shell around `model.retrain`.

One run: resolve the champion from the registry (seeding it from `--model` when the
registry is empty), read a time range of the ticks topic, decode and group it per symbol,
let `model.retrain.retrain` fit a challenger and decide, store the challenger, its plot and
the attempt in the registry, and on promotion announce the new champion on the compacted
models topic (`streamer.models`), which serving instances follow.

Time ranges apply to the tick's own `ts` (epoch ms; `--since` is relative to now, `since`
inclusive, `until` exclusive). Reading starts, per partition, at the first record whose
Kafka timestamp is at most `SEEK_SLACK_MS` before `since` (a tick is published after it
happens; ticks published more than that long before their own `ts` would be missed) and
stops at the end offsets taken when the run starts.

Exit codes of a one-shot run: 0 promoted or rejected, 3 skipped (not enough data), 2 a
refused input (bad checkpoint, bad flag), 1 anything else. `--every` loops log a failed run,
count it and go on; they exit 0 when stopped by SIGINT or SIGTERM (a second signal
interrupts the run in progress).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from tqdm import tqdm

from model.checkpoint import Predictor
from model.data import Series
from model.registry import Registry, RegistryError
from model.retrain import (
    RetrainConfig,
    attempt_record,
    format_summary,
    plot,
    prune,
    retrain,
    save_challenger,
)
from streamer import models
from streamer.settings import Settings
from streamer.ticks import decode

__all__ = [
    "EXIT_SKIPPED",
    "Options",
    "ReadResult",
    "RegistryError",
    "RetrainMetrics",
    "exit_code",
    "group_series",
    "loop",
    "models_promote",
    "models_rollback",
    "models_table",
    "options_from_args",
    "parse_duration",
    "read_ticks",
    "resolve_champion",
    "resync_announcement",
    "run_once",
]

log = logging.getLogger(__name__)

EXIT_SKIPPED = 3
SEEK_SLACK_MS = 3_600_000
OUTCOMES = ("promoted", "rejected", "skipped", "failed")
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `45s`, `30m`, `2h`, `1d` or `250ms`; raises ValueError."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 30m, 2h, 1d)")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise ValueError(f"duration must be > 0: {text!r}")
    return value


# --------------------------------------------------------------------- reading the topic
@dataclass
class ReadResult:
    """What a read of the ticks topic gave: series per symbol and the counts of the rest."""

    series: list[Series]
    records: int = 0  # records read from Kafka
    ticks: int = 0  # valid ticks in range, kept
    malformed: dict[str, int] = field(default_factory=dict)  # reason -> records skipped
    stale: int = 0  # ts not after the symbol's previous kept tick
    out_of_range: int = 0  # valid ticks outside [since, until)

    def describe(self) -> str:
        bad = sum(self.malformed.values())
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.malformed.items()))
        return (
            f"{self.records} records: {self.ticks} ticks of {len(self.series)} symbol(s) kept, "
            f"{bad} malformed{f' ({why})' if why else ''}, {self.stale} stale, "
            f"{self.out_of_range} outside the range"
        )


def group_series(
    symbols: list[str], ts: list[int], price: list[float], volume: list[float]
) -> tuple[list[Series], int]:
    """Ticks in topic order → one `Series` per symbol (first-seen order) and the number of
    ticks dropped because their ts was not after the symbol's previous kept tick (the
    engine's rule, made strict: a series has one tick per timestamp). Volume: NaN = absent;
    a symbol with no volume at all gets None, otherwise absent volumes become 0."""
    rows: dict[str, list[int]] = {}
    last: dict[str, int] = {}
    stale = 0
    for i, (sym, t) in enumerate(zip(symbols, ts, strict=True)):
        prev = last.get(sym)
        if prev is not None and t <= prev:
            stale += 1
            continue
        last[sym] = t
        rows.setdefault(sym, []).append(i)
    ts_a, p_a, v_a = (np.asarray(ts, np.int64), np.asarray(price, np.float64),
                      np.asarray(volume, np.float64))  # fmt: skip
    out = []
    for sym, idx in rows.items():
        ix = np.asarray(idx)
        v = v_a[ix]
        vol = None if np.isnan(v).all() else np.nan_to_num(v, nan=0.0)
        out.append(Series(sym, ts_a[ix], p_a[ix], vol))
    return out, stale


async def read_ticks(
    bootstrap: str,
    topic: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> ReadResult:
    """Every tick of `topic` with `since_ms <= ts < until_ms` (either bound optional), up to
    the end offsets at the start of the call, decoded with `streamer.ticks.decode`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    symbols: list[str] = []
    tss: list[int] = []
    prices: list[float] = []
    vols: list[float] = []
    res = ReadResult(series=[])
    try:
        # The consumer's partitions_for_topic is synchronous and reads only cached metadata
        # (None for a topic it never fetched): ask the cluster.
        parts = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
        if not parts:
            log.warning("topic %s does not exist (or has no partitions): no ticks", topic)
            return res
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        begin = await consumer.beginning_offsets(tps)
        start = dict(begin)
        if since_ms is not None:
            found = await consumer.offsets_for_times(
                {tp: max(since_ms - SEEK_SLACK_MS, 0) for tp in tps}
            )
            for tp in tps:
                got = found.get(tp)
                start[tp] = end[tp] if got is None else max(got.offset, begin[tp])
        for tp in tps:
            consumer.seek(tp, start[tp])
        todo = {tp for tp in tps if start[tp] < end[tp]}
        bar = tqdm(total=sum(end[tp] - start[tp] for tp in tps), desc=f"reading {topic}",
                   unit="rec", disable=not progress, leave=False)  # fmt: skip
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while todo:
            got = await consumer.getmany(*todo, timeout_ms=500, max_records=50_000)
            n_got = 0
            for tp, recs in got.items():
                recs = [r for r in recs if r.offset < end[tp]]
                n_got += len(recs)
                good, bad = decode([r.value for r in recs], [r.key for r in recs])
                res.records += len(recs)
                for b in bad:
                    res.malformed[b.reason] = res.malformed.get(b.reason, 0) + 1
                for sym, t, p, v in zip(good.symbols, good.ts, good.price, good.volume,
                                        strict=True):  # fmt: skip
                    if (since_ms is not None and t < since_ms) or (
                        until_ms is not None and t >= until_ms
                    ):
                        res.out_of_range += 1
                        continue
                    symbols.append(sym)
                    tss.append(t)
                    prices.append(p)
                    vols.append(v)
            bar.update(n_got)
            for tp in list(todo):
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
            if n_got:
                last_progress = loop.time()
            elif loop.time() - last_progress > timeout_s:
                raise TimeoutError(f"reading {topic}: no progress in {timeout_s} s")
        bar.close()
    finally:
        await consumer.stop()
    res.series, res.stale = group_series(symbols, tss, prices, vols)
    res.ticks = sum(len(s) for s in res.series)
    return res


# --------------------------------------------------------------------- metrics
class RetrainMetrics:
    """The retrain loop's Prometheus series, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.runs = Counter("tickcast_retrain_runs", "Retraining runs by outcome", ["outcome"],
                            registry=r)  # fmt: skip
        for o in OUTCOMES:
            self.runs.labels(o)
        self.seconds = Histogram("tickcast_retrain_seconds", "Duration of a retraining run",
                                 buckets=RUN_BUCKETS, registry=r)  # fmt: skip
        self.score = Gauge(
            "tickcast_retrain_score",
            "Evaluation-slice RMSE of the last attempt (price units)",
            ["model"],
            registry=r,
        )
        self.last_success = Gauge(
            "tickcast_retrain_last_success_timestamp",
            "Unix time of the last run that did not fail (promoted, rejected or skipped)",
            registry=r,
        )

    def record(self, outcome: str, seconds: float, scores: dict[str, Any] | None) -> None:
        self.runs.labels(outcome).inc()
        self.seconds.observe(seconds)
        if outcome != "failed":
            self.last_success.set(time.time())
        for name in ("champion", "challenger", "persistence"):
            if scores and name in scores:
                self.score.labels(name).set(float(scores[name]["rmse"]))


# --------------------------------------------------------------------- one run
@dataclass
class Options:
    """One run's inputs besides the stream settings."""

    rc: RetrainConfig = field(default_factory=RetrainConfig)
    since_s: float | None = None  # relative: ticks from now - since_s on
    since_ms: int | None = None  # absolute (epoch ms); exclusive with since_s
    until_ms: int | None = None
    keep: int = 20  # rejected versions kept
    progress: bool = True
    quiet: bool = False  # no summary table on stdout
    trigger: dict[str, Any] | None = None  # why this attempt started (`--on-drift`)

    def range_ms(self) -> tuple[int | None, int | None]:
        since = self.since_ms
        if self.since_s is not None:
            since = int(time.time() * 1000 - self.since_s * 1000)
        return since, self.until_ms


def _announce(settings: Settings, record: dict[str, Any]) -> None:
    if not settings.models_topic:
        return
    rec = {k: record[k] for k in ("version", "previous", "reason", "time_ms") if k in record}
    rec["scores"] = record.get("scores") or {}
    asyncio.run(models.announce(settings.kafka_bootstrap, settings.models_topic, rec,
                                settings.replication))  # fmt: skip


def model_dir(name: str) -> Path:
    """A bundled model name (`stocks`) or a checkpoint directory."""
    bundled = Path(__file__).resolve().parent.parent / "model" / "bundled" / name
    return bundled if (bundled / "metadata.json").is_file() else Path(name)


def resolve_champion(settings: Settings, registry: Registry) -> Predictor:
    """The registry's champion; an empty registry is seeded from `settings.model` (imported,
    promoted with reason "seed" and announced)."""
    version = registry.champion()
    if version is None:
        src = model_dir(settings.model)
        version = registry.import_dir(src)
        scores = registry.load(version).metadata.get("scores") or {}
        rec = registry.promote(version, "seed", source=str(src), scores=scores)
        log.info("registry %s seeded with %s from %s", registry.root, version, src)
        _announce(settings, rec)
    return registry.load(version)


def resync_announcement(settings: Settings, registry: Registry) -> bool:
    """Announce the registry's champion again if the models topic names another version (a
    promotion whose announcement failed). Returns whether it announced."""
    champ = registry.champion()
    if not settings.models_topic or champ is None:
        return False
    latest = asyncio.run(models.read_latest(settings.kafka_bootstrap, settings.models_topic))
    if latest is not None and latest.get("version") == champ:
        return False
    record = next((h for h in reversed(registry.history()) if h.get("version") == champ), None)
    log.warning("models topic names %s, the registry's champion is %s: announcing it again",
                None if latest is None else latest.get("version"), champ)  # fmt: skip
    _announce(settings, record or {"version": champ, "reason": "promote"})
    return True


def run_once(settings: Settings, opts: Options, registry: Registry | None = None) -> dict[str, Any]:
    """One retraining attempt; returns its attempts.jsonl record (outcome, scores, ...)."""
    t0 = time.perf_counter()
    registry = registry or Registry(settings.registry)
    champion = resolve_champion(settings, registry)
    resync_announcement(settings, registry)
    since, until = opts.range_ms()
    read = asyncio.run(read_ticks(settings.kafka_bootstrap, settings.ticks_topic, since, until,
                                  progress=opts.progress))  # fmt: skip
    log.info("read %s: %s", settings.ticks_topic, read.describe())
    attempt = retrain(read.series, champion, opts.rc)
    now = datetime.now(UTC)
    attempt_id = f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z"
    source = f"kafka:{settings.ticks_topic}"
    version = save_challenger(registry, attempt, attempt_id, source, opts.rc)
    plot_path: str | None = None
    if attempt.challenger_eval is not None:
        registry.plots_dir.mkdir(parents=True, exist_ok=True)
        png = registry.plots_dir / f"{attempt_id}.png"
        if plot(attempt, str(png)):
            plot_path = str(png)
    extra: dict[str, Any] = {
        "read": {"records": read.records, "malformed": read.malformed, "stale": read.stale,
                 "out_of_range": read.out_of_range},
        "topic": settings.ticks_topic,
    }  # fmt: skip
    if opts.trigger is not None:
        extra["trigger"] = opts.trigger
    error: BaseException | None = None
    if attempt.outcome == "promoted" and version is not None:
        scores = {k: float(v["rmse"]) for k, v in attempt.scores.items()}
        rec = registry.promote(version, "retrain", scores=scores, attempt=attempt_id)
        try:
            _announce(settings, rec)
            extra["announced"] = True
        except Exception as e:  # the next run announces it again (resync_announcement)
            extra["announced"], extra["announce_error"] = False, f"{type(e).__name__}: {e}"
            error = e
    extra["pruned"] = prune(registry, opts.keep)
    attempt.seconds = time.perf_counter() - t0
    record = attempt_record(attempt, attempt_id=attempt_id, challenger_version=version,
                            since_ms=since, until_ms=until, plot_path=plot_path, rc=opts.rc,
                            extra=extra)  # fmt: skip
    registry.record_attempt(record)
    if not opts.quiet:
        print(f"retrain {attempt_id}: {read.describe()}")
        print(format_summary(attempt))
        if version:
            print(f"challenger stored as {version}" + (f"; plot {plot_path}" if plot_path else ""))
    if error is not None:
        raise error
    return record


# --------------------------------------------------------------------- the loop
@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop` (the run in progress finishes); a second one interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("signal %d: stopping after the current run", signum)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def loop(
    settings: Settings,
    opts: Options,
    every_s: float,
    *,
    metrics: RetrainMetrics | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 0,
    max_runs: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run `run_once` every `every_s` seconds (start to start; an overrun starts the next at
    once) until SIGINT/SIGTERM, `stop` or `max_runs`. A failed run is logged and counted.
    Prometheus metrics on http://metrics_host:metrics_port/metrics (port 0: none)."""
    metrics = metrics or RetrainMetrics()
    stop = stop or threading.Event()
    server = None
    if metrics_port:
        server, _ = start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
        log.info("retrain metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    runs = 0
    try:
        with _stop_on_signals(stop):
            while not stop.is_set():
                started = time.monotonic()
                try:
                    rec = run_once(settings, opts)
                    metrics.record(rec["outcome"], time.monotonic() - started, rec["scores"])
                    log.info("retrain run %d: %s (%s)", runs + 1, rec["outcome"], rec["reason"])
                except KeyboardInterrupt:
                    raise
                except Exception:
                    log.exception("retrain run %d failed", runs + 1)
                    metrics.record("failed", time.monotonic() - started, None)
                runs += 1
                if max_runs is not None and runs >= max_runs:
                    break
                stop.wait(max(0.0, every_s - (time.monotonic() - started)))
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0


# --------------------------------------------------------------------- tickcast models
def _fmt_ms(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def models_table(registry: Registry) -> str:
    """Every stored version, oldest first; `*` marks the champion."""
    champ = registry.champion()
    promoted = {h.get("version") for h in registry.history()}
    rows = [("", "version", "created", "parent", "data range (UTC)", "challenger RMSE",
             "champion RMSE", "status")]  # fmt: skip
    for m in registry.versions():
        v = str(m.get("version"))
        if "error" in m:
            status = "unreadable"
        elif v == champ:
            status = "champion"
        elif v in promoted:
            status = "promoted-before"
        elif (m.get("retrain") or {}).get("outcome") in ("rejected", "promoted"):
            status = "rejected" if m["retrain"]["outcome"] == "rejected" else "not promoted"
        else:
            status = "stored"
        d = m.get("data") or {}
        sc = m.get("scores") or {}

        def num(x: Any) -> str:
            return f"{x:.6g}" if isinstance(x, int | float) else "-"

        rows.append((
            "*" if v == champ else "", v, str(m.get("created", "-"))[:19],
            str(m.get("parent") or "-"),
            f"{_fmt_ms(d.get('first_ts_ms'))} → {_fmt_ms(d.get('last_ts_ms'))}",
            num(sc.get("challenger")), num(sc.get("champion")), status,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip


def models_promote(settings: Settings, version: str, reason: str = "promote") -> dict[str, Any]:
    """Make `version` the champion (it must load) and announce it; returns the record."""
    registry = Registry(settings.registry)
    scores = registry.load(version).metadata.get("scores") or {}
    rec = registry.promote(version, reason, scores=scores)
    _announce(settings, rec)
    return rec


def models_rollback(settings: Settings) -> dict[str, Any]:
    """Promote the champion before the current one (reason "rollback") and announce it."""
    target = Registry(settings.registry).rollback_target()
    return models_promote(settings, target, reason="rollback")


def options_from_args(args: Any) -> Options:
    """`Options` from the parsed `tickcast retrain` flags."""
    from model.config import TrainConfig

    scratch = bool(args.from_scratch)
    tc = TrainConfig(
        seed=args.seed,
        learning_rate=args.lr if args.lr is not None else (1e-3 if scratch else 5e-4),
        max_steps=args.max_steps if args.max_steps is not None else (3000 if scratch else 600),
        max_seconds=args.max_seconds if args.max_seconds > 0 else None,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    for name, v in (("--margin", args.margin), ("--keep", args.keep)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0")
    for name, f in (("--eval-fraction", args.eval_fraction), ("--val-fraction", args.val_fraction)):
        if not 0 < f < 1:
            raise ValueError(f"{name} must be in (0, 1)")
    if args.eval_fraction + args.val_fraction >= 0.9:
        raise ValueError("--eval-fraction + --val-fraction must leave 10% to train on")
    rc = RetrainConfig(margin=args.margin, eval_fraction=args.eval_fraction,
                       val_fraction=args.val_fraction, from_scratch=scratch, train=tc)  # fmt: skip
    return Options(
        rc=rc,
        since_s=parse_duration(args.since) if args.since else None,
        since_ms=args.since_ms,
        until_ms=args.until_ms,
        keep=args.keep,
        progress=not args.no_progress,
    )


def exit_code(record: dict[str, Any]) -> int:
    """One-shot exit status of a run: 3 when skipped, else 0."""
    return EXIT_SKIPPED if record["outcome"] == "skipped" else 0
