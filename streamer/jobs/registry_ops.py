"""`tickcast models`: the registry's versions as a table, promote and rollback, and the
announcement of a change of champion on the models topic (which the retrain job uses too).

May import `model.registry`, `streamer.kafka.announcements`, `streamer.settings` and
`streamer.timefmt`; nothing from serve/ or core/.
"""

from __future__ import annotations

import asyncio
from typing import Any

from model.registry import Registry
from streamer.kafka import announcements
from streamer.settings import Settings
from streamer.timefmt import MINUTES, format_ms

__all__ = ["announce_change", "models_promote", "models_rollback", "models_table"]


def announce_change(settings: Settings, record: dict[str, Any]) -> None:
    """Publish a change of champion (`Registry.promote`'s record) on the models topic, which
    serving instances follow; nothing when no models topic is configured."""
    if not settings.models_topic:
        return
    rec = {k: record[k] for k in ("version", "previous", "reason", "time_ms") if k in record}
    rec["scores"] = record.get("scores") or {}
    asyncio.run(announcements.announce(settings.kafka_bootstrap, settings.models_topic, rec,
                                settings.replication_factor))  # fmt: skip


def _minutes(ms: Any) -> str:
    return format_ms(ms, MINUTES) if isinstance(ms, int | float) else "-"


def models_table(registry: Registry) -> str:
    """Every stored version, oldest first; `*` marks the champion."""
    champ = registry.champion()
    promoted = {h.get("version") for h in registry.changes()}
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
            f"{_minutes(d.get('first_ts_ms'))} → {_minutes(d.get('last_ts_ms'))}",
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
    announce_change(settings, rec)
    return rec


def models_rollback(settings: Settings) -> dict[str, Any]:
    """Promote the champion before the current one (reason "rollback") and announce it."""
    target = Registry(settings.registry).rollback_target()
    return models_promote(settings, target, reason="rollback")
