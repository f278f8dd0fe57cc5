"""`tickcast retrain`: the Kafka shell around `model.retrain`.

One run: resolve the champion from the registry (seeding it from `--model` when the
registry is empty), read a time range of the ticks topic (`jobs.tick_range`; `--since` is
relative to now), let `model.retrain.retrain` fit a challenger and decide, store the
challenger, its plot and the attempt in the registry, and on promotion announce the new
champion on the compacted models topic (`jobs.registry_ops.announce_change`), which serving
instances follow. `tickcast models` lives in `jobs.registry_ops`.

Exit codes of a one-shot run: 0 promoted or rejected, 3 skipped (not enough data), 2 a
refused input (bad checkpoint, bad flag), 1 anything else. `--every` loops log a failed run,
count it and go on; they exit 0 when stopped by SIGINT or SIGTERM (a second signal
interrupts the run in progress).

May import `model`, `streamer.settings`, `streamer.kafka` and the other jobs modules it
names; nothing from serve/ or core/ apart from `core.ticks` (through `tick_range`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from model.checkpoint import LoadedModel
from model.paths import resolve_model
from model.registry import Registry, RegistryError
from model.retrain import (
    RetrainConfig,
    attempt_record,
    prune,
    retrain,
    save_challenger,
)
from model.retrain_report import format_summary, plot
from streamer.core.ticks import make_format
from streamer.jobs.registry_ops import announce_change
from streamer.jobs.tick_range import read_ticks
from streamer.kafka import announcements as models
from streamer.settings import Settings

__all__ = [
    "EXIT_SKIPPED",
    "Options",
    "RegistryError",
    "RetrainMetrics",
    "exit_code",
    "options_from_args",
    "parse_duration",
    "resolve_champion",
    "resync_announcement",
    "run_once",
]

log = logging.getLogger(__name__)

EXIT_SKIPPED = 3
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
            ["forecaster"],
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


def resolve_champion(settings: Settings, registry: Registry) -> LoadedModel:
    """The registry's champion; an empty registry is seeded from `settings.model` (imported,
    promoted with reason "seed" and announced)."""
    version = registry.champion()
    if version is None:
        src = resolve_model(settings.model)
        version = registry.import_dir(src)
        scores = registry.load(version).metadata.get("scores") or {}
        rec = registry.promote(version, "seed", source=str(src), scores=scores)
        log.info("registry %s seeded with %s from %s", registry.root, version, src)
        announce_change(settings, rec)
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
    record = next((h for h in reversed(registry.changes()) if h.get("version") == champ), None)
    log.warning("models topic names %s, the registry's champion is %s: announcing it again",
                None if latest is None else latest.get("version"), champ)  # fmt: skip
    announce_change(settings, record or {"version": champ, "reason": "promote"})
    return True


def run_once(settings: Settings, opts: Options, registry: Registry | None = None) -> dict[str, Any]:
    """One retraining attempt; returns its attempts.jsonl record (outcome, scores, ...)."""
    t0 = time.perf_counter()
    registry = registry or Registry(settings.registry)
    champion = resolve_champion(settings, registry)
    resync_announcement(settings, registry)
    since, until = opts.range_ms()
    read = asyncio.run(read_ticks(settings.kafka_bootstrap, settings.ticks_topic, since, until,
                                  progress=opts.progress,
                                  fmt=make_format(settings.format, settings.ts_unit)))  # fmt: skip
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
            announce_change(settings, rec)
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
