"""One settings object for every subcommand: defaults, then `TICKCAST_*` environment
variables, then command-line flags (highest wins).

Each field's name maps to a flag (`kafka_bootstrap` → `--kafka-bootstrap`) and an
environment variable (`TICKCAST_KAFKA_BOOTSTRAP`). Where Kafka has a name for a setting, the
field uses it (`group_id`, `max_poll_records`, `fetch_max_wait_ms`, ...); `RENAMED` keeps the
older names working, with a warning. Subcommands declare which fields they
take with `add_arguments(parser, names)`; `from_args(ns)` builds the object back.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "TICKCAST_"


@dataclass(frozen=True)
class Settings:
    """Everything the stream tools can be told. Units are in the names."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    ticks_topic: str = "ticks"
    forecasts_topic: str = "forecasts"
    dlq_topic: str = "ticks.dlq"
    state_topic: str = "tickcast.state"
    models_topic: str = "tickcast.models"
    num_partitions: int = 4
    replication_factor: int = 1
    group_id: str = "tickcast"
    client_id: str = "serve-1"
    model: str = "stocks"
    registry: str = "registry"
    max_symbols: int = 16384
    idle_evict_s: float = 3600.0
    state_cache_symbols: int = 16384
    state_max_age_s: float = 2592000.0
    exactly_once: bool = True
    checkpoint_interval_s: float = 5.0
    checkpoint_max_records: int = 500
    max_poll_records: int = 20000
    precompile: bool = True
    fetch_max_wait_ms: int = 5
    session_timeout_ms: int = 10000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 60000
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9300
    feed_host: str = "127.0.0.1"
    feed_port: int = 8765
    feed_token: str = ""
    feed_max_connections: int = 2000
    feed_max_symbols: int = 1000
    feed_max_frame: int = 65536
    feed_client_msgs_per_s: float = 20.0
    feed_conflate_after: int = 5000
    feed_slow_close_s: float = 5.0
    feed_buffer_bytes: int = 262144
    feed_frames_per_s: float = 20.0
    feed_snapshot_points: int = 120
    feed_hub_symbols: int = 16384
    feed_heartbeat_s: float = 1.0
    feed_wildcard: bool = True
    uvloop: bool = True
    log_level: str = "INFO"
    format: str = "tickcast"  # record format of the ticks topic (model.tickparse)
    ts_unit: str = "auto"  # epoch unit of numeric ts: auto (per value), s, ms, us, ns

    def check(self, names: Iterable[str] | None = None) -> None:
        """Refuse values no run could use, among `names` (None: every setting); raises
        ValueError naming the setting. A port outside 0-65535 (0: none, or any free one);
        a count or a Kafka timeout below 1; a time in seconds or a rate not above 0
        (`feed_frames_per_s` 0 means no limit)."""
        for name in names if names is not None else NAMES:
            v = getattr(self, name)
            if name in PORTS and not 0 <= v <= 65535:
                raise ValueError(f"{name} must be 0-65535, got {v}")
            if name in POSITIVE and not v >= 1:
                raise ValueError(f"{name} must be at least 1, got {v}")
            if name in ABOVE_ZERO and not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")
            if name == "feed_frames_per_s" and not v >= 0:
                raise ValueError(f"{name} must be >= 0 (0: no limit), got {v}")


PORTS = ("metrics_port", "feed_port")
# Settings whose value must be >= 1 (counts of things, and Kafka's timeouts in ms).
POSITIVE = (
    "num_partitions", "replication_factor", "max_symbols", "max_poll_records",
    "checkpoint_max_records", "session_timeout_ms", "heartbeat_interval_ms",
    "max_poll_interval_ms", "feed_max_connections", "feed_max_symbols", "feed_max_frame",
    "feed_hub_symbols",
)  # fmt: skip
# Times in seconds and rates that must be > 0.
ABOVE_ZERO = (
    "idle_evict_s", "state_max_age_s", "checkpoint_interval_s", "feed_client_msgs_per_s",
    "feed_slow_close_s", "feed_heartbeat_s",
)  # fmt: skip


NAMES: list[str] = [f.name for f in fields(Settings)]

# Names before Kafka's own were adopted (issue 11). Their TICKCAST_* variables and flags still
# work, with a warning; the new name wins when both are given.
RENAMED: dict[str, str] = {
    "partitions": "num_partitions",
    "replication": "replication_factor",
    "group": "group_id",
    "instance": "client_id",
    "checkpoint_chunk": "checkpoint_max_records",
    "max_batch": "max_poll_records",
    "fetch_wait_ms": "fetch_max_wait_ms",
    "feed_rate": "feed_client_msgs_per_s",
    "feed_frame_rate": "feed_frames_per_s",
    "feed_queue": "feed_conflate_after",
    "feed_history": "feed_snapshot_points",
}

HELP: dict[str, str] = {
    "kafka_bootstrap": "Kafka bootstrap servers, host:port[,host:port]",
    "ticks_topic": "topic the ticks arrive on (key = symbol, JSON value)",
    "forecasts_topic": "topic forecasts are published to (key = symbol)",
    "dlq_topic": "dead-letter topic for rejected ticks (original bytes, reason in headers)",
    "state_topic": "compacted topic of per-symbol state checkpoints",
    "models_topic": "compacted topic announcing the champion model version; serve follows "
    "it and hot-swaps (empty: no announcements)",
    "num_partitions": "partitions for topics this tool creates (ticks, forecasts, dlq, state)",
    "replication_factor": "replication factor of topics this tool creates",
    "group_id": "consumer group of the serving instances (Kafka group.id)",
    "client_id": "this instance's name (Kafka client.id), unique in the group and stable "
    "across restarts (it names the transactional producer, so a restart fences its predecessor; "
    "forecasts carry it as `instance`)",
    "model": "model checkpoint directory or bundled model name (served until an announced "
    "champion replaces it)",
    "registry": "model registry directory: announced versions are loaded from "
    "REGISTRY/versions/VERSION",
    "max_symbols": "device slots: symbols stepped at once; beyond it the least recently seen "
    "moves to the host cache (state kept)",
    "idle_evict_s": "free a symbol's device slot after this many seconds without a tick (its "
    "state waits in the host cache and the state topic)",
    "state_cache_symbols": "most evicted symbols' states held in host memory (the state topic "
    "holds the rest; ~5 kB each for the default model)",
    "state_max_age_s": "a symbol whose next tick comes this long (tick time) after its last "
    "starts afresh (default 30 days)",
    "exactly_once": "Kafka transactions: forecasts, state and offsets commit atomically "
    "(--no-exactly-once: at-least-once, forecasts carry (partition, offset) to dedupe)",
    "checkpoint_interval_s": "seconds between per-symbol state checkpoints",
    "checkpoint_max_records": "most state records one micro-batch writes: a partition's checkpoint "
    "with more dirty symbols is spread over several micro-batches",
    "max_poll_records": "most ticks taken from Kafka per micro-batch (Kafka max.poll.records)",
    "precompile": "compile the common batch shapes before consuming (no compile stalls on "
    "live ticks; compiled code is cached on disk across restarts)",
    "fetch_max_wait_ms": "longest wait for more ticks before a micro-batch runs "
    "(Kafka fetch.max.wait.ms)",
    "session_timeout_ms": "an instance silent this long (no heartbeat: dead, frozen, stalled) "
    "leaves the group and its partitions move to the others (Kafka session.timeout.ms; the "
    "broker accepts 6000 to 1800000)",
    "heartbeat_interval_ms": "heartbeats to the group coordinator; also how soon an instance "
    "learns of a rebalance (Kafka heartbeat.interval.ms, well below session_timeout_ms)",
    "max_poll_interval_ms": "an instance whose batch loop has not fetched for this long leaves "
    "the group (Kafka max.poll.interval.ms)",
    "metrics_host": "address of the Prometheus metrics endpoint",
    "metrics_port": "port of the Prometheus metrics endpoint (0: none)",
    "feed_host": "address of the websocket feed, dashboard and health checks",
    "feed_port": "port of the websocket feed, dashboard and health checks (0: no feed)",
    "feed_token": "bearer token feed clients must present (empty: no auth)",
    "feed_max_connections": "most feed connections at once (more are closed with 1013)",
    "feed_max_symbols": "most symbols one feed connection may subscribe to",
    "feed_max_frame": "largest client message in bytes (larger: closed with 1009)",
    "feed_client_msgs_per_s": "client messages a second per connection (burst twice that)",
    "feed_conflate_after": "forecasts queued per feed client before they are conflated",
    "feed_slow_close_s": "close a feed client (4001) whose socket accepts nothing this long",
    "feed_buffer_bytes": "send buffer per feed client, in user space and again in the kernel "
    "(a send waits beyond it; a client blocked feed_slow_close_s is closed)",
    "feed_frames_per_s": "most frames a second to one feed client; forecasts published faster "
    "are merged into the next frame (0: no limit)",
    "feed_snapshot_points": "recent points (price, forecast, interval) in each snapshot",
    "feed_hub_symbols": "symbols whose latest forecast and recent points the feed keeps for "
    "snapshots (~5 KB each); beyond it the least recently published are dropped",
    "feed_heartbeat_s": "seconds between heartbeats on every feed connection",
    "feed_wildcard": 'allow subscribing to every symbol with "*"',
    "uvloop": "run the event loop on uvloop when it is installed",
    "log_level": "logging level",
    "format": "record format of the ticks topic: tickcast, binance, coinbase, or "
    "fields:symbol=KEY,price=KEY,ts=KEY[,volume=KEY] (docs/stream.md)",
    "ts_unit": "epoch unit of numeric timestamps: auto (inferred per value from its "
    "magnitude), s, ms, us or ns",
}


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _convert(name: str, kind: type, text: str) -> Any:
    try:
        return _parse_bool(text) if kind is bool else kind(text)
    except ValueError as e:
        raise ValueError(f"{env_name(name)}={text!r}: {e}") from None


def _kinds() -> dict[str, type]:
    defaults = Settings()
    return {f.name: type(getattr(defaults, f.name)) for f in fields(Settings)}


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults overridden by `TICKCAST_*` variables."""
    env = os.environ if environ is None else environ
    kinds = _kinds()
    values: dict[str, Any] = {}
    for old, new in RENAMED.items():
        if env_name(old) in env:
            warnings.warn(
                f"{env_name(old)} is deprecated: use {env_name(new)}", FutureWarning, stacklevel=2
            )
            values[new] = _convert(new, kinds[new], env[env_name(old)])
    values.update(
        {n: _convert(n, k, env[env_name(n)]) for n, k in kinds.items() if env_name(n) in env}
    )
    return Settings(**values)


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add a flag for each named setting; its default comes from the environment."""
    base = from_env()
    kinds = _kinds()
    group = parser.add_argument_group("settings (flag, or TICKCAST_<NAME> in the environment)")
    for name in names:
        kind = kinds[name]
        flag = "--" + name.replace("_", "-")
        flags = [flag] + ["--" + o.replace("_", "-") for o, n in RENAMED.items() if n == name]
        default = getattr(base, name)
        text = f"{HELP[name]} [{env_name(name)}; default {default}]"
        if kind is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=text
            )
        else:  # a renamed setting's old flag stays as an alias
            group.add_argument(*flags, dest=name, type=kind, default=default, help=text)


def from_args(ns: argparse.Namespace) -> Settings:
    """Settings from parsed flags (fields without a flag keep their environment value);
    raises ValueError for a value of the command's settings that no run could use."""
    with warnings.catch_warnings():  # building the parser (`add_arguments`) warned already
        warnings.simplefilter("ignore", FutureWarning)
        base = from_env()
    given = {f.name: getattr(ns, f.name) for f in fields(Settings) if hasattr(ns, f.name)}
    out = dataclasses.replace(base, **given)
    out.check(given)  # the command's own settings, once the flags have overridden the env
    return out
